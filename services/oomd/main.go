// Command oomd is the memory watchdog daemon. It must be started by execd, which gives it
// its session (and through it the Terminator capability) and brokers one pre-identified
// connection per subject.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/memlimit"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/sdnotify"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/internal/version"
	"oomd.dev/oomd/services/oomd/daemon"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/policyfile"
	"oomd.dev/oomd/services/oomd/tracelog"
)

func main() {
	var o options
	flag.StringVar(&o.socket, "socket", "", "control socket path (owner-only)")
	flag.StringVar(&o.logd, "logd", "", "logd journal socket path")
	flag.StringVar(&o.policyFile, "policy", "", "JSON policy file (over the defaults); empty = defaults")
	flag.BoolVar(&o.enableInject, "enable-inject", false, "allow the test-only inject call")
	flag.IntVar(&o.ring, "ring", 4096, "event ring capacity")
	flag.StringVar(&o.sys.Meminfo, "meminfo", "/proc/meminfo", "where MemAvailable is read for pressure levels (tests write their own)")
	flag.StringVar(&o.sys.PSI, "psi", "/proc/pressure/memory", "where memory pressure (PSI full avg10) is read when the policy sets PSI thresholds (tests write their own)")
	flag.StringVar(&o.sys.RecordPath, "reboot-record", "", "reboot record store: a file or a raw block device (4 KiB at offset 0); empty = none")
	flag.BoolVar(&o.sys.RecordInit, "reboot-record-init", false, "let --reboot-record claim a store whose first 4 KiB are neither zeros nor a reboot record (overwriting them); without it such a store is refused")
	flag.StringVar(&o.sys.Action, "reboot-action", "exit:0", "after a system OOM or requested reboot: exit:N or reboot (sync + reboot(2)); oomd never starts a process")
	flag.StringVar(&o.spill, "spill", "", "audit spill file (in the runtime dir): where audit records go, fsync'ed, when logd is unreachable or slower than --audit-sync-timeout; replayed to logd later. Empty = none: records wait for logd")
	flag.Int64Var(&o.spillMax, "spill-max-bytes", daemon.DefaultSpillMaxBytes, "bound of the spill file; when full, records wait in memory and so do their kills")
	flag.DurationVar(&o.syncTimeout, "audit-sync-timeout", daemon.DefaultAuditSyncTimeout, "with --spill: how long logd may take to acknowledge audit records before they are spilled")
	flag.DurationVar(&o.logdWait, "logd-start-wait", daemon.DefaultLogdStartWait, "without a non-empty --spill: how long to wait for logd at start (to learn where the audit sequence stands and read back earlier decisions) before watching without it; records, and the kills they gate, then wait for logd")
	flag.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (host:port), e.g. 127.0.0.1:9466; empty = off. Unauthenticated read-only data (subject names and usage): bind to loopback")
	flag.StringVar(&o.trace, "trace", "", "live trace directory: every input of the policy core, in rotated files, for replay by oomd's CLI (oomctl; oomwatchctl from the .deb); default: <--policy file>.trace, none without --policy; \"off\" disables it")
	flag.Int64Var(&o.traceOpts.MaxFileBytes, "trace-file-bytes", tracelog.DefaultMaxFileBytes, "rotate a live trace file at this size")
	flag.IntVar(&o.traceOpts.MaxFiles, "trace-files", tracelog.DefaultMaxFiles, "live trace files kept (the oldest are deleted); the bound on disk is trace-files × trace-file-bytes")
	flag.StringVar(&o.eventSeqFile, "event-seq-file", "", "event seq high-water mark, so seqs never go backwards across a restart; default: <--policy file>.eventseq, none without --policy")
	procs := flag.Int("procs", 2, "threads that run oomd's Go code at once (GOMAXPROCS, at most the CPUs the runtime sees, a cgroup CPU limit included; the GOMAXPROCS environment variable wins): the owner loop and one for everything else, so that a flood of RPC publishers on a busy host cannot hold the loop back. An idle oomd wakes one thread per tick either way (docs/perf.md, idle cost)")
	memLimit := memlimit.Flag()
	logFormat := logx.FormatFlag()
	showVersion := version.Flag()
	flag.Parse()
	version.Exit(showVersion, os.Stdout)
	if err := logx.ApplyFormat(*logFormat); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	log := logx.New("oomd")
	defer log.Sync()
	if *procs < 1 {
		log.Error("--procs must be at least 1", zap.Int("procs", *procs))
		os.Exit(2)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		// GOMAXPROCS(0) is what the runtime chose: the CPUs, or fewer under a cgroup CPU
		// limit. Setting it also ends the runtime's once-a-second re-reading of the limit.
		runtime.GOMAXPROCS(min(*procs, runtime.GOMAXPROCS(0)))
	}
	memlimit.Apply(*memLimit, memlimit.Default, log)
	// Signals first, so a SIGTERM during start-up still shuts down cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("oomd failed", zap.Error(err))
		fmt.Fprintf(os.Stderr, "oomd: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	socket, logd, policyFile string
	enableInject             bool
	ring                     int
	sys                      daemon.SystemOptions
	spill                    string
	spillMax                 int64
	syncTimeout, logdWait    time.Duration
	eventSeqFile             string
	metrics                  string
	trace                    string
	traceOpts                tracelog.Options
}

func run(ctx context.Context, o options, log *zap.Logger) error {
	// Each watched subject holds up to two fds (its kernel reading): take every fd the
	// hard limit allows (daemon.MaxSubjects says how they bound the subjects).
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			log.Warn("could not raise the fd limit", zap.Uint64("to", rl.Max), zap.Error(err))
		}
	}
	if o.socket == "" || o.logd == "" {
		return fmt.Errorf("--socket and --logd are required")
	}
	var metrics *daemon.MetricsServer
	if o.metrics != "" {
		m, err := daemon.ListenMetrics(o.metrics, log)
		if err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		metrics = m
	}
	pol, polVersion := policy.DefaultPolicy(), uint64(1)
	var store *daemon.FilePolicyStore
	if o.policyFile != "" {
		store = &daemon.FilePolicyStore{Path: o.policyFile}
		p, v, err := store.LoadPolicyState()
		if err != nil {
			// A bad file must not keep the watchdog down (a restart would fail the same
			// way, for ever): watch with the defaults, and say so loudly.
			polVersion = store.LastVersion() + 1
			log.Error("policy file rejected whole; watching with the default policy until a valid one is set",
				zap.String("file", o.policyFile), zap.Error(err))
			fmt.Fprintf(os.Stderr, "oomd: policy file %s rejected: %v; using the default policy\n", o.policyFile, err)
		} else {
			pol, polVersion = p, v
		}
	}

	sess, err := session.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("execd session: %w", err)
	}
	defer sess.Close()
	term, system, err := sess.Grants(ctx)
	if err != nil {
		return err
	}
	defer term.Release()
	defer system.Release()
	sys, closeSys, err := daemon.OpenSystem(o.sys, daemon.ExecdSystem{S: system}, os.Stdout, log)
	if err != nil {
		return err
	}
	defer closeSys()

	auditor := daemon.NewLogdAuditor(o.logd, log)
	auditor.SetStartWait(o.logdWait)
	if o.spill != "" {
		sp, err := daemon.OpenSpill(o.spill, o.spillMax, log)
		if err != nil {
			return err
		}
		defer sp.Close()
		auditor.UseSpill(sp, o.syncTimeout)
	}
	// Where the audit sequence stands, and the kill decisions an earlier run made
	// durably: they are continued, never made again (docs/reliability/audit-faults.md).
	run, err := daemon.ExecdRun()
	if err != nil {
		// Without it no earlier decision can be matched to a live instance; ids still
		// continue above the journal's.
		log.Error("cannot identify execd's run: decisions of an earlier oomd run are not continued", zap.Error(err))
	}
	auditor.SetExecdRun(run)
	if err := auditor.Open(ctx); err != nil {
		return err
	}
	defer auditor.Close() // a start that fails below releases what Open holds
	recovered, err := auditor.RecoverDecisions(ctx, run)
	if err != nil {
		log.Error("could not read back durable decisions: earlier runs' open decisions may be made again", zap.Error(err))
	}
	cfg := daemon.Config{
		Policy: pol, PolicyVersion: polVersion, RingSize: o.ring, EnableInject: o.enableInject, Markers: os.Stdout, Log: log, System: sys,
		DecisionBase: recovered.DecisionBase, Durable: recovered.Durable,
	}
	// Under systemd, execd passes oomd the unit's watchdog: the tick loop feeds it.
	cfg.Alive = sdnotify.NewWatchdog(log).Beat
	if store != nil {
		cfg.PolicyStore = store
	} else {
		log.Warn("no --policy file: policy changes are not persisted and a restart comes back with the defaults")
	}
	if o.eventSeqFile == "" && o.policyFile != "" {
		o.eventSeqFile = o.policyFile + ".eventseq"
	}
	if o.eventSeqFile != "" {
		f, base, err := daemon.OpenEventSeq(o.eventSeqFile, nil)
		switch {
		case errors.Is(err, daemon.ErrEventSeqDamaged):
			log.Error("event seqs restart at 1", zap.Error(err))
		case err != nil:
			// Not fatal: a watchdog without continuous seqs beats no watchdog.
			log.Error("no event seq high-water mark: seqs restart at 1 and may be reused after a restart", zap.Error(err))
		}
		if f != nil {
			cfg.EventSeq, cfg.EventSeqBase = f, base
		}
	} else {
		log.Warn("no --policy or --event-seq-file: event seqs restart at 1 with every oomd run")
	}
	if o.trace == "" && o.policyFile != "" {
		o.trace = o.policyFile + ".trace"
	}
	if o.trace != "" && o.trace != "off" {
		// The run's start time names its files: runs sort by age.
		rec, err := tracelog.Open(o.trace, time.Now().UnixNano(), o.traceOpts)
		if err != nil {
			// Not fatal: the watchdog comes up without its flight recorder.
			log.Error("no live trace", zap.Error(err))
		} else {
			cfg.Trace = rec // the daemon closes it when Run ends
			log.Info("live trace", zap.String("dir", o.trace), zap.Int64("fileBytes", o.traceOpts.MaxFileBytes), zap.Int("files", o.traceOpts.MaxFiles))
		}
	}
	d, err := daemon.New(cfg, auditor, daemon.ExecdTerminator{T: term})
	if err != nil {
		return err
	}
	auditor.SetSpillHook(d.AuditSpilled)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		return err
	}
	// The owner loop first: exit reports execd delivers while watchExits is being
	// answered are calls the loop must take.
	errc := make(chan error, 3)
	go func() { errc <- d.Run(ctx) }()
	// Whatever ends run also ends the loop, which closes (flushes) the live trace: an
	// idle loop writes it only every ten seconds.
	defer func() {
		cancel()
		select {
		case <-d.Done():
		case <-time.After(2 * time.Second):
		}
	}()
	if err := watchExits(ctx, term, d); err != nil {
		return err
	}

	bc, err := rpcx.InheritedConn(rpcx.EnvBrokerFD)
	if err != nil {
		return fmt.Errorf("broker socket: %w", err)
	}
	broker, ok := bc.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("broker fd is not a Unix socket")
	}
	l, err := rpcx.Listen(o.socket)
	if err != nil {
		return err
	}
	srv := rpcx.NewServer(log.Named("control"), func(rpcx.Peer) (capnp.Client, error) { return d.ControlClient(), nil },
		rpcx.WithGuard(guards.Control))

	go func() { errc <- d.ServeBroker(ctx, broker) }()
	go func() { errc <- srv.Serve(ctx, l) }()
	if metrics != nil {
		go metrics.Serve(ctx, d)
	}

	go reloadOnHUP(ctx, o.policyFile, d, log)

	fmt.Println("oomd: ready")
	log.Info("ready", zap.String("socket", o.socket), zap.Uint64("softBytes", pol.SoftBytes), zap.Uint64("hardBytes", pol.HardBytes),
		zap.Uint32("sampleMs", pol.SampleMs), zap.Bool("inject", o.enableInject))
	if err := sess.Ready(ctx); err != nil {
		return err
	}

	var runErr error
	select {
	case <-ctx.Done():
	case <-sess.Done():
		runErr = fmt.Errorf("execd session closed")
	case runErr = <-errc:
	}
	srv.Close(2 * time.Second)
	os.Remove(o.socket)
	return runErr
}

// watchExits registers oomd for every exit execd observes.
func watchExits(ctx context.Context, term oomdpb.Terminator, d *daemon.Daemon) error {
	f, rel := term.WatchExits(ctx, func(p oomdpb.Terminator_watchExits_Params) error {
		return p.SetWatcher(d.ExitWatcherClient())
	})
	defer rel()
	if _, err := f.Struct(); err != nil {
		return fmt.Errorf("watch exits: %w", err)
	}
	return nil
}

// reloadOnHUP re-reads the policy file on every SIGHUP (the usual "reload"): a valid file
// becomes a new version, put in force like a setPolicy; an invalid one is rejected
// whole, with a log line naming the field, and nothing changes. SIGHUP never ends oomd.
func reloadOnHUP(ctx context.Context, path string, d *daemon.Daemon, log *zap.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if path == "" {
			log.Warn("SIGHUP: no --policy file to reload")
			continue
		}
		p, err := policyfile.Load(path)
		if err != nil {
			log.Error("SIGHUP: policy file rejected whole; the policy in force stays", zap.String("file", path), zap.Error(err))
			continue
		}
		v, err := d.SetPolicy(p, 0)
		if err != nil {
			log.Error("SIGHUP: policy not changed", zap.String("file", path), zap.Error(err))
			continue
		}
		log.Info("SIGHUP: policy reloaded", zap.String("file", path), zap.Uint64("version", v))
	}
}
