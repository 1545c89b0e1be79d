// Command hog is a deterministic memory hog, the test fixture for oomd's kill path.
//
// It grows an arena in fixed steps up to a cap, touching every page so the memory is
// really resident, and publishes the arena size as its memstat after each step. Its
// bootstrap on the memstat connection is a TestHook: oomd's inject reaches it and makes
// it allocate more at once. It exits cleanly on SIGTERM unless --ignore-sigterm (the
// stuck-process case that execd must SIGKILL).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/lib/memstat"
)

func main() {
	var cfg config
	flag.Uint64Var(&cfg.stepBytes, "step-bytes", 1<<20, "bytes added per step")
	flag.DurationVar(&cfg.stepEvery, "step-every", 100*time.Millisecond, "time between steps; 0 = grow only on inject")
	flag.Uint64Var(&cfg.maxBytes, "max-bytes", 64<<20, "arena cap in bytes: the hog never holds more")
	flag.Uint64Var(&cfg.startBytes, "start-bytes", 0, "bytes allocated at start")
	flag.BoolVar(&cfg.ignoreTerm, "ignore-sigterm", false, "ignore SIGTERM (a stuck process execd must SIGKILL)")
	flag.DurationVar(&cfg.period, "sample-period", 50*time.Millisecond, "minimum time between two memstat samples")
	flag.Parse()

	log := logx.New("hog")
	defer log.Sync()
	if err := run(cfg, log); err != nil {
		log.Error("hog failed", zap.Error(err))
		os.Exit(1)
	}
}

type config struct {
	stepBytes, maxBytes, startBytes uint64
	stepEvery, period               time.Duration
	ignoreTerm                      bool
}

func run(cfg config, log *zap.Logger) error {
	// Notifying on a signal re-enables it, so a stuck hog must not ask for SIGTERM at all.
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if cfg.ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
		sigs = sigs[:1]
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()

	a := newArena(cfg.maxBytes)
	hook := &testHook{arena: a}
	pub, err := memstat.Connect(ctx, memstat.Options{
		Period:    cfg.period,
		Bootstrap: capnp.Client(oomdpb.TestHook_ServerToClient(hook)),
	}, log)
	if err != nil {
		return fmt.Errorf("connect memstat: %w", err)
	}
	defer pub.Close()
	hook.pub = pub
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.Run(ctx) }()

	sess, err := session.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer sess.Close()

	pub.Set(a.grow(cfg.startBytes))
	if err := sess.Ready(ctx); err != nil {
		return err
	}
	log.Info("hog ready", zap.Uint64("bytes", a.size()), zap.Uint64("max", cfg.maxBytes))

	var steps <-chan time.Time
	if cfg.stepEvery > 0 {
		t := time.NewTicker(cfg.stepEvery)
		defer t.Stop()
		steps = t.C
	}
	for {
		select {
		case <-ctx.Done():
			log.Info("hog stopping on signal", zap.Uint64("bytes", a.size()))
			return nil
		case err := <-pubDone:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case <-steps:
			before := a.size()
			n := a.grow(cfg.stepBytes)
			if n != before {
				log.Info("hog grew", zap.Uint64("bytes", n))
				pub.Set(n)
			}
		}
	}
}

// testHook serves oomdpb.TestHook on the memstat connection.
type testHook struct {
	arena *arena
	pub   *memstat.Publisher
}

var _ oomdpb.TestHook_Server = (*testHook)(nil)

func (h *testHook) Inject(_ context.Context, call oomdpb.TestHook_inject) error {
	n := h.arena.grow(call.Args().Bytes())
	if h.pub != nil {
		h.pub.Set(n)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetTotalBytes(n)
	return nil
}
