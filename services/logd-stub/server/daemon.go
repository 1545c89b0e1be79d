package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/logd-stub/journal"
)

// Config is what Run needs.
type Config struct {
	Socket  string          // the Journal socket (created owner-only)
	Dir     string          // the journal directory (created 0700)
	Journal journal.Options // disk and memory bounds
	// ReadyTimeout bounds the Session.ready call to execd (default 10s).
	ReadyTimeout time.Duration
	// ShutdownTimeout bounds closing the connections on stop (default 2s).
	ShutdownTimeout time.Duration
	// Server options after the Journal guard (tests shorten the deadlines).
	Server []rpcx.ServerOption
}

// Run is the logd daemon: it opens the journal, serves it on cfg.Socket, reports ready
// to execd when started by it (rpcx.EnvSessionFD), and serves until ctx ends (nil) or
// the journal fails (an error, so the supervisor restarts logd and recovery runs).
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 2 * time.Second
	}
	j, err := journal.Open(cfg.Dir, cfg.Journal, log.Named("journal"))
	if err != nil {
		return fmt.Errorf("open journal: %w", err)
	}
	defer func() {
		if err := j.Close(); err != nil {
			log.Error("close journal", zap.Error(err))
		}
	}()
	// Damage found by recovery goes into the journal before any writer is served.
	if n, err := RecordDamage(ctx, j, log); err != nil {
		log.Error("could not record the journal damage in the journal; it is in this log only", zap.Error(err))
	} else if n > 0 {
		st := j.Status()
		log.Error("journal was corrupt: see the corrupt records and the quarantine files", zap.Int("corruptions", st.Corruptions),
			zap.Int64("quarantined_bytes", st.QuarantinedBytes), zap.Uint64("lost_seqs", st.LostSeqs))
	}
	l, err := rpcx.Listen(cfg.Socket)
	if err != nil {
		return err
	}
	srv := rpcx.NewServer(log, New(j, log).Bootstrap, append([]rpcx.ServerOption{rpcx.WithGuard(guards.Journal)}, cfg.Server...)...)
	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, l) }()
	// Connections close before the journal (deferred above), so no handler writes to a
	// closed journal.
	defer srv.Close(cfg.ShutdownTimeout)

	st := j.Status()
	log.Info("logd ready", zap.String("socket", cfg.Socket), zap.Uint64("seq", st.LastSeq))
	if session := reportReady(ctx, cfg.ReadyTimeout, log); session != nil {
		defer session.Close()
	}

	select {
	case <-ctx.Done():
		log.Info("logd stopping", zap.NamedError("cause", context.Cause(ctx)))
		stopServe()
		return <-served
	case <-j.Failed():
		stopServe()
		<-served
		return errors.New("journal failed: exiting so recovery runs on restart")
	case err := <-served:
		return err
	}
}

// reportReady calls Session.ready on the connection execd gave us, if any. Failing to
// reach execd is logged, not fatal: logd serves either way. The returned connection is
// kept open for the process's lifetime, since execd may read its closing as our exit.
func reportReady(ctx context.Context, timeout time.Duration, log *zap.Logger) *rpc.Conn {
	if os.Getenv(rpcx.EnvSessionFD) == "" {
		return nil
	}
	c, err := rpcx.InheritedConn(rpcx.EnvSessionFD)
	if err != nil {
		log.Warn("no session with execd; running standalone", zap.Error(err))
		return nil
	}
	conn := rpcx.NewConn(c, capnp.Client{}, log.Named("session"))
	session := oomdpb.Session(conn.Bootstrap(ctx))
	defer session.Release()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	f, release := session.Ready(rctx, nil)
	defer release()
	if _, err := f.Struct(); err != nil {
		log.Warn("execd did not take our ready; serving anyway", zap.Error(err))
		return conn
	}
	log.Info("reported ready to execd")
	return conn
}
