// Command hog is a deterministic memory hog, the test fixture for oomd's kill path.
//
// It grows an arena in fixed steps up to a cap, touching every page so the memory is
// really resident, and publishes the arena size as its memstat after each step (on its
// memstat page when execd gave it one). Its bootstrap on the memstat connection is a
// TestHook: oomd's inject reaches it and makes it allocate more at once. It exits
// cleanly on SIGTERM unless --ignore-sigterm (the stuck-process case that execd must
// SIGKILL).
//
// For kernel truth it can also behave like a program that never heard of oomd:
// --no-publish publishes nothing, --under-report N publishes a tenth (1/N) of what it
// holds, and --fork N starts N member processes that each hold --member-bytes (they
// log their pids; the whole family must go when the subject is killed).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/internal/version"
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
	flag.BoolVar(&cfg.noPublish, "no-publish", false, "publish no memstat at all (a program that never heard of oomd)")
	flag.Uint64Var(&cfg.underReport, "under-report", 1, "publish 1/N of the arena (N > 1: a subject that under-reports)")
	flag.IntVar(&cfg.fork, "fork", 0, "start N member processes, each holding --member-bytes")
	flag.Uint64Var(&cfg.memberBytes, "member-bytes", 16<<20, "bytes each --fork member holds")
	flag.BoolVar(&cfg.stepsOnInject, "steps-after-inject", false, "start the --step-every steps only after the first inject (a runaway a test can start at will)")
	member := flag.Bool("member", false, "internal: run as a --fork member (hold --start-bytes until a signal)")
	showVersion := version.Flag()
	flag.Parse()
	version.Exit(showVersion, os.Stdout)
	if *member {
		os.Exit(runMember(cfg.startBytes))
	}
	if cfg.underReport == 0 {
		fmt.Fprintln(os.Stderr, "hog: --under-report must be >= 1")
		os.Exit(2)
	}

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
	noPublish                       bool
	underReport                     uint64
	fork                            int
	memberBytes                     uint64
	stepsOnInject                   bool
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
	hook := &testHook{arena: a, cfg: cfg, injected: make(chan struct{}, 1)}
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

	a.grow(cfg.startBytes, hook.publish)
	for i := range cfg.fork {
		m, err := startMember(cfg.memberBytes)
		if err != nil {
			return fmt.Errorf("fork member %d: %w", i, err)
		}
		defer m.Wait()
		log.Info("hog member started", zap.Int("pid", m.Process.Pid), zap.Uint64("bytes", cfg.memberBytes))
	}
	if err := sess.Ready(ctx); err != nil {
		return err
	}
	log.Info("hog ready", zap.Uint64("bytes", a.size()), zap.Uint64("max", cfg.maxBytes),
		zap.Bool("publishes", !cfg.noPublish), zap.Uint64("underReport", cfg.underReport), zap.Bool("page", pub.OnPage()))

	var steps <-chan time.Time
	var ticker *time.Ticker
	startSteps := func() {
		if ticker == nil && cfg.stepEvery > 0 {
			ticker = time.NewTicker(cfg.stepEvery)
			steps = ticker.C
		}
	}
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	if !cfg.stepsOnInject {
		startSteps()
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
		case <-hook.injected:
			startSteps()
		case <-steps:
			before := a.size()
			if n := a.grow(cfg.stepBytes, hook.publish); n != before {
				log.Info("hog grew", zap.Uint64("bytes", n))
			}
		}
	}
}

// testHook serves oomdpb.TestHook on the memstat connection.
type testHook struct {
	arena    *arena
	cfg      config
	pub      *memstat.Publisher
	injected chan struct{} // one token per inject, for --steps-after-inject
}

// publish reports total as the hog's memstat, as configured (nothing, or 1/N of it).
// The arena calls it under its lock, so totals leave in the order they were reached.
func (h *testHook) publish(total uint64) {
	if h.pub != nil && !h.cfg.noPublish {
		h.pub.Set(total / h.cfg.underReport)
	}
}

var _ oomdpb.TestHook_Server = (*testHook)(nil)

func (h *testHook) Inject(_ context.Context, call oomdpb.TestHook_inject) error {
	n := h.arena.grow(call.Args().Bytes(), h.publish)
	select {
	case h.injected <- struct{}{}:
	default:
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetTotalBytes(n)
	return nil
}

// startMember starts a copy of the hog as a --fork member holding n bytes. It is the
// hog's own child: it runs in the subject's cgroup and is part of the subject.
func startMember(n uint64) (*exec.Cmd, error) {
	cmd := exec.Command("/proc/self/exe", "--member", "--start-bytes", strconv.FormatUint(n, 10))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd, cmd.Start()
}

// runMember holds n touched bytes until SIGTERM or SIGINT.
func runMember(n uint64) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := newArena(n)
	a.grow(n, nil)
	<-ctx.Done()
	return 0
}
