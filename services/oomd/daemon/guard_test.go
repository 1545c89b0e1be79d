package daemon

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/rpcx/rpcxtest"
)

// serveControl serves d's control API on a real socket exactly as oomd's main does
// (guards.Control), with short deadlines so the slow-peer attacks finish in seconds.
func serveControl(t *testing.T, d *Daemon, maxConns int, first time.Duration) (string, *rpcx.Server) {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := rpcx.Listen(path)
	require.NoError(t, err)
	srv := rpcx.NewServer(log, func(rpcx.Peer) (capnp.Client, error) { return d.ControlClient(), nil },
		rpcx.WithGuard(guards.Control), rpcx.WithMaxConns(maxConns), rpcx.WithTimeouts(first, time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		srv.Close(5 * time.Second)
	})
	return path, srv
}

// TestControlSocketSurvivesHostilePeers runs every attack of rpcxtest against oomd's
// control server on a real Unix socket.
func TestControlSocketSurvivesHostilePeers(t *testing.T) {
	d, _, _, _ := newTestDaemon(t)
	const maxConns, first = 16, 500 * time.Millisecond
	path, srv := serveControl(t, d, maxConns, first)
	rpcxtest.Run(t, rpcxtest.Target{
		Path:                path,
		Probe:               rpcxtest.ControlStatus(path),
		Interface:           oomdpb.Control_TypeID,
		Method:              5, // status
		CapMethod:           3, // subscribe(sinceSeq, subscriber)
		MaxConns:            maxConns,
		FirstMessageTimeout: first,
		Conns:               srv.Conns,
	})
}
