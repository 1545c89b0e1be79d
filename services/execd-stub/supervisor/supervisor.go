package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/services/execd-stub/cgroup"
	"oomd.dev/oomd/services/execd-stub/manifest"
)

// Restart backoff (see the package documentation).
const (
	RestartBaseDelay  = 100 * time.Millisecond
	RestartMaxDelay   = 30 * time.Second
	RestartResetAfter = 10 * time.Second
)

// killGrace bounds the wait for a SIGKILLed process to be reaped during Stop; a process
// stuck in the kernel (D state) must not hang the shutdown forever.
const killGrace = 5 * time.Second

// Config wires a Supervisor.
type Config struct {
	Manifest *manifest.Manifest // validated and expanded
	Log      *zap.Logger
	// Stdout and Stderr are given to every child as is (no copying), so markers reach
	// the console unchanged. Nil means os.Stdout / os.Stderr.
	Stdout, Stderr *os.File
	// Env is the environment children start from; nil means os.Environ().
	Env []string
	// ReapOrphans makes Run reap zombies that are not managed children (PID 1 or a
	// child subreaper must). Leave it off when the process has other children of its
	// own, e.g. in a test binary.
	ReapOrphans bool
	// RebootWatcherTimeout bounds each reboot watcher's answer during a teardown; zero
	// means DefaultRebootWatcherTimeout.
	RebootWatcherTimeout time.Duration
	// Cgroups contains every child in a cgroup of its own (package cgroup); nil runs
	// children uncontained, with no kernel reading for the watchdog.
	Cgroups *cgroup.Manager
	// NoPages turns off the memstat page (children then publish over RPC, as in v1).
	NoPages bool
	// WatchdogEnv is added to the watchdog service's environment only (under systemd:
	// NOTIFY_SOCKET, execd's sdnotify.Relay, and WATCHDOG_USEC). The notify protocol's
	// variables in Env reach no child: a subject that could reach systemd's notify
	// socket could tell it the unit is alive, ready or stopping.
	WatchdogEnv []string
	// OnReady, if set, is called once when every service was started and the watchdog
	// (if the manifest has one) called ready: the stack is up (systemd's READY=1).
	OnReady func()
	// OnStopping, if set, is called once when Run begins stopping the services
	// (systemd's STOPPING=1).
	OnStopping func()
}

// Supervisor runs the services of one manifest. Create it with New and call Run once.
type Supervisor struct {
	cfg Config
	log *zap.Logger

	exits  *exitQueue
	broker *broker

	// spawnMu is held from fork until the pid is in managed, and by the orphan reaper
	// while it peeks and reaps, so the reaper never takes a managed child's status.
	spawnMu   sync.Mutex
	managed   map[int]bool
	reapNudge chan struct{}

	hasWatchdog bool
	finish      context.CancelCauseFunc // ends Run early (see maybeFinish)

	mu             sync.Mutex
	services       map[string]*service
	order          []*service // start order
	shuttingDown   bool
	teardown       *teardownState            // the system teardown, once one was requested
	rebootWatchers map[string]*rebootWatcher // by subject
	waiters        sync.WaitGroup
}

// service is the supervisor's state for one manifest entry.
type service struct {
	spec     *manifest.Service
	spawns   uint64 // instance counter: the n-th spawn is instance n
	cur      *proc  // the running instance, nil if none
	wasReady bool   // some instance called ready
	// firstReady is closed when wasReady becomes true.
	firstReady chan struct{}

	failures     int // consecutive failed instances, for the restart backoff
	restartTimer *time.Timer
}

// New returns a supervisor for cfg.Manifest.
func New(cfg Config) *Supervisor {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.RebootWatcherTimeout <= 0 {
		cfg.RebootWatcherTimeout = DefaultRebootWatcherTimeout
	}
	s := &Supervisor{
		cfg:       cfg,
		log:       cfg.Log,
		managed:   make(map[int]bool),
		reapNudge: make(chan struct{}, 1),
		services:  make(map[string]*service),

		rebootWatchers: make(map[string]*rebootWatcher),
	}
	s.exits = newExitQueue(cfg.Log.Named("exits"))
	s.broker = newBroker(cfg.Log.Named("broker"))
	for _, spec := range cfg.Manifest.StartOrder() {
		svc := &service{spec: spec, firstReady: make(chan struct{})}
		s.services[spec.ID] = svc
		s.order = append(s.order, svc)
		s.hasWatchdog = s.hasWatchdog || spec.Watchdog()
	}
	return s
}

// Run starts every service, supervises them until ctx ends (or a service marked exitWith
// exits, or the watchdog exits after a Teardown), then stops them in reverse order.
// exitCode is what execd should exit with: 0 after a stop request, the status of the
// exitWith service or of the watchdog (its exit code, or 128+signal), or 1 with the
// start-up error (returned after stopping what had been started).
func (s *Supervisor) Run(ctx context.Context) (exitCode int, err error) {
	runCtx, finish := context.WithCancelCause(ctx)
	defer finish(nil)
	s.mu.Lock()
	s.finish = finish
	s.mu.Unlock()

	bg, cancel := context.WithCancel(context.Background())
	var bgDone sync.WaitGroup
	if s.cfg.ReapOrphans {
		bgDone.Go(func() { s.reapLoop(bg) })
	}
	bgDone.Go(func() { s.broker.run(bg) })

	err = s.startAll(runCtx)
	switch {
	case err == nil:
		s.log.Info("all services started")
	case s.tornDown():
		s.log.Info("start-up cut short by the system teardown", zap.Error(err))
		err = nil
	}
	if err == nil {
		s.announceReady(runCtx)
		<-runCtx.Done()
	}
	if s.cfg.OnStopping != nil {
		s.cfg.OnStopping()
	}
	var ew exitWithCause
	switch {
	case errors.As(context.Cause(runCtx), &ew):
		s.log.Info("stopping all services", zap.String("reason", ew.Error()))
		exitCode, err = ew.code, nil
	case ctx.Err() != nil:
		s.log.Info("stopping all services", zap.String("reason", context.Cause(ctx).Error()))
		err = nil
	default:
		s.log.Error("start-up failed; stopping what was started", zap.Error(err))
		exitCode = 1
	}
	s.Stop()
	s.waitWaiters(killGrace)
	s.releaseRebootWatchers()
	s.exits.close()
	cancel()
	bgDone.Wait()
	s.broker.close()
	if s.cfg.ReapOrphans {
		s.reapOrphans() // whatever the last exits left behind
	}
	return exitCode, err
}

// announceReady calls OnReady once the watchdog, if there is one, called ready (it need
// not: nothing has to depend on it), unless ctx ends first. Every other service was
// started by then.
func (s *Supervisor) announceReady(ctx context.Context) {
	if s.cfg.OnReady == nil {
		return
	}
	for _, svc := range s.order {
		if !svc.spec.Watchdog() {
			continue
		}
		select {
		case <-svc.firstReady:
		case <-ctx.Done():
			return
		}
	}
	s.log.Info("the stack is up")
	s.cfg.OnReady()
}

// exitWithCause ends Run when a service marked exitWith exited, or the watchdog after a
// teardown.
type exitWithCause struct {
	subject string
	status  string
	code    int
	why     string
}

func (e exitWithCause) Error() string {
	return fmt.Sprintf("%s exited (%s) %s", e.subject, e.status, e.why)
}

// maybeFinish ends Run when p's exit ends execd: a service marked exitWith exited on its
// own, or the watchdog exited after it asked for a teardown (it is ending the system;
// execd passes its status on). s.mu must be held.
func (s *Supervisor) maybeFinish(p *proc) {
	var why string
	switch spec := p.svc.spec; {
	case s.finish == nil:
		return
	case spec.ExitWith && !s.shuttingDown:
		why = "and is marked exitWith"
	case spec.Watchdog() && s.teardown != nil:
		why = "after the system teardown"
	default:
		return
	}
	r := p.report
	code := int(r.ExitCode)
	if r.Signal != 0 {
		code = 128 + int(r.Signal)
	}
	s.finish(exitWithCause{subject: r.Subject, status: r.describe(), code: code, why: why})
}

// tornDown reports whether a teardown was requested.
func (s *Supervisor) tornDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.teardown != nil
}

func (s *Supervisor) startAll(ctx context.Context) error {
	for _, svc := range s.order {
		for _, dep := range svc.spec.DependsOn {
			err := s.waitReady(ctx, s.services[dep], svc.spec.ID)
			switch {
			case err == nil:
			case svc.spec.Watchdog() && ctx.Err() == nil:
				// No single fault may leave the machine without its watchdog (security
				// invariant 11): it starts without the dependency (logd: its auditing is
				// degraded, and kills wait for durability), and the dependency's restart
				// policy may bring it back.
				s.log.Error("starting the watchdog without its dependency", zap.String("subject", svc.spec.ID),
					zap.String("dependency", dep), zap.Error(err))
			default:
				return fmt.Errorf("start %s: %w", svc.spec.ID, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return err // stop requested: start nothing more
		}
		s.mu.Lock()
		if s.shuttingDown {
			s.mu.Unlock()
			return errors.New("start-up interrupted by shutdown")
		}
		_, err := s.spawn(svc)
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("start %s: %w", svc.spec.ID, err)
		}
	}
	return nil
}

// waitReady waits until some instance of dep called ready, and fails if the running
// instance exits first.
func (s *Supervisor) waitReady(ctx context.Context, dep *service, forID string) error {
	s.mu.Lock()
	p, ready := dep.cur, dep.wasReady
	s.mu.Unlock()
	if ready {
		return nil
	}
	if p == nil {
		return fmt.Errorf("dependency %s is not running and never was ready", dep.spec.ID)
	}
	s.log.Info("waiting for dependency to be ready", zap.String("subject", dep.spec.ID),
		zap.Uint64("instance", p.instance), zap.String("for", forID))
	select {
	case <-p.readyCh:
		return nil
	case <-p.exited:
		s.mu.Lock()
		defer s.mu.Unlock()
		if dep.wasReady {
			return nil
		}
		return fmt.Errorf("dependency %s exited before it was ready (%s)", dep.spec.ID, p.report.describe())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop refuses further terminate requests, cancels pending restarts and stops every
// running service in reverse start order. It returns when all have exited (or could not
// be reaped within a bound after SIGKILL). During a teardown it first lets the teardown
// finish (it is bounded, and stopping the same services already), then stops what is
// left: the watchdog.
func (s *Supervisor) Stop() {
	s.mu.Lock()
	s.beginShutdown()
	td := s.teardown
	s.mu.Unlock()
	if td != nil {
		<-td.done
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		s.stopService(s.order[i])
	}
}

// beginShutdown refuses terminate() from now on and cancels pending restarts; nothing
// is started any more. s.mu must be held.
func (s *Supervisor) beginShutdown() {
	s.shuttingDown = true
	for _, svc := range s.order {
		if svc.restartTimer != nil {
			svc.restartTimer.Stop()
			svc.restartTimer = nil
		}
	}
}

// stopService stops svc's running instance, if any: SIGTERM, its stop timeout, then
// SIGKILL. It reports whether SIGKILL was needed.
func (s *Supervisor) stopService(svc *service) (killed bool) {
	s.mu.Lock()
	p := svc.cur
	if p == nil {
		s.mu.Unlock()
		return false
	}
	log := s.log.With(zap.String("subject", svc.spec.ID), zap.Uint64("instance", p.instance), zap.Int("pid", p.pid))
	log.Info("stopping", zap.String("signal", "SIGTERM"), zap.Duration("stopTimeout", svc.spec.StopTimeout()))
	s.signalAll(p, unix.SIGTERM)
	s.mu.Unlock()

	timer := time.NewTimer(svc.spec.StopTimeout())
	defer timer.Stop()
	select {
	case <-p.exited:
		return false
	case <-timer.C:
	}
	s.mu.Lock()
	if !p.done {
		log.Warn("did not stop in time; killing", zap.String("signal", "SIGKILL"))
		p.killed = true
		killed = true
		s.signalAll(p, unix.SIGKILL)
	}
	s.mu.Unlock()
	select {
	case <-p.exited:
	case <-time.After(killGrace):
		log.Error("still not reaped after SIGKILL; giving up on it", zap.Duration("waited", killGrace))
	}
	return killed
}

// waitWaiters waits for every waiter to record its exit, at most d: Stop already gave up
// on a process that SIGKILL could not end.
func (s *Supervisor) waitWaiters(d time.Duration) {
	done := make(chan struct{})
	go func() { s.waiters.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		s.log.Error("some children were never reaped; exiting without them", zap.Duration("waited", d))
	}
}

// ErrNoWatchdog is returned by ReloadWatchdog when no watchdog instance is running.
var ErrNoWatchdog = errors.New("no watchdog running")

// WatchdogPid is the pid of the watchdog service's current process, 0 when it has none
// (or the manifest no watchdog). Safe from any goroutine.
func (s *Supervisor) WatchdogPid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.order {
		if svc.spec.Watchdog() && svc.cur != nil {
			return svc.cur.pid
		}
	}
	return 0
}

// ReloadWatchdog sends SIGHUP to the running watchdog instance, and to no other child:
// oomd then re-reads its policy file (systemctl reload, through execd's own SIGHUP).
func (s *Supervisor) ReloadWatchdog() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.order {
		if svc.spec.Watchdog() && svc.cur != nil {
			s.log.Info("reload: SIGHUP to the watchdog", zap.String("subject", svc.spec.ID),
				zap.Uint64("instance", svc.cur.instance), zap.Int("pid", svc.cur.pid))
			return s.signal(svc.cur, unix.SIGHUP)
		}
	}
	return ErrNoWatchdog
}

// signalAll sends sig to the main process (through its pidfd) and to every other
// process of its group. It returns the main process's error: ESRCH-like when it was
// already reaped. s.mu must be held.
func (s *Supervisor) signalAll(p *proc, sig unix.Signal) error {
	err := s.signal(p, sig)
	if p.group != nil {
		if sig == unix.SIGKILL {
			p.group.Kill()
		} else {
			p.group.Signal(sig, p.pid)
		}
	}
	return err
}

// signal sends sig through the pidfd, which cannot reach a recycled pid. s.mu must be
// held: the pidfd is closed under it once the process was reaped.
func (s *Supervisor) signal(p *proc, sig unix.Signal) error {
	if p.done {
		return unix.ESRCH
	}
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil {
		return fmt.Errorf("pidfd_send_signal %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// releaseRebootWatchers drops every reboot watcher's client (Run, when it returns).
func (s *Supervisor) releaseRebootWatchers() {
	s.mu.Lock()
	watchers := s.rebootWatchers
	s.rebootWatchers = nil
	s.mu.Unlock()
	for _, w := range watchers {
		w.client.Release()
	}
}
