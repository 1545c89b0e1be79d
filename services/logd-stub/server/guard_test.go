package server

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/rpcx/rpcxtest"
)

// TestJournalSocketSurvivesHostilePeers runs every attack of rpcxtest against logd as
// Run serves it (the Journal guard, a real journal, a real Unix socket), with short
// deadlines so that the slow-peer attacks finish in seconds.
func TestJournalSocketSurvivesHostilePeers(t *testing.T) {
	const maxConns, first = 16, 500 * time.Millisecond
	socket := filepath.Join(t.TempDir(), "logd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Socket: socket, Dir: t.TempDir(),
			Server: []rpcx.ServerOption{rpcx.WithMaxConns(maxConns), rpcx.WithTimeouts(first, time.Second)},
		}, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	probe := rpcxtest.JournalStatus(socket)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return probe(ctx) == nil
	}, 10*time.Second, 10*time.Millisecond, "logd never served")

	rpcxtest.Run(t, rpcxtest.Target{
		Path:                socket,
		Probe:               probe,
		Interface:           oomdpb.Journal_TypeID,
		Method:              2, // status
		CapMethod:           2, // no Journal method takes a capability
		MaxConns:            maxConns,
		FirstMessageTimeout: first,
	})
}
