package supervisor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/sdnotify"
	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/execd-stub/cgroup"
	"oomd.dev/oomd/services/execd-stub/manifest"
)

// Fds every child gets, in ExtraFiles order (ExtraFiles[i] is fd 3+i in the child).
const (
	childSessionFD = 3
	childSecondFD  = 4 // OOMD_MEMSTAT_FD, or OOMD_BROKER_FD for the watchdog
	childPageFD    = 5 // OOMD_MEMSTAT_PAGE_FD (not the watchdog)
)

// proc is one spawned instance of a service. Fields below mu are guarded by
// Supervisor.mu.
type proc struct {
	svc      *service
	instance uint64
	pid      int
	pidfd    int
	cmd      *exec.Cmd
	started  time.Time
	session  *rpc.Conn
	group    *cgroup.Group // its cgroup (or /proc tree); nil when uncontained
	page     *os.File      // the read-write memfd of its memstat page; nil for none
	readyCh  chan struct{} // closed when the child called ready
	exited   chan struct{} // closed after the exit was reaped and recorded

	ready      bool
	done       bool   // reaped; pidfd closed
	terminated bool   // a terminate() request was accepted
	decision   uint64 // the decision id that request carried
	killed     bool   // SIGKILL was sent after the stop timeout
	killTimer  *time.Timer
	report     ExitReport
}

// ExitReport is one observed exit, as sent to the exit watcher.
type ExitReport struct {
	Subject    string
	Instance   uint64
	Pid        int32
	ExitCode   int32  // valid when Signal == 0
	Signal     int32  // terminating signal, 0 for a normal exit
	Killed     bool   // execd escalated to SIGKILL and that killed it
	Terminated bool   // the exit followed a terminate() request
	Decision   uint64 // the decision id of that request (0: none)
}

func (r ExitReport) describe() string {
	if r.Signal != 0 {
		return "signal=" + unix.SignalName(syscall.Signal(r.Signal))
	}
	return "exit=" + strconv.Itoa(int(r.ExitCode))
}

func (r ExitReport) failed() bool { return r.Signal != 0 || r.ExitCode != 0 }

// spawn starts a new instance of svc with its session (and memstat delivery or broker socket)
// and starts its waiter before anything can miss the exit. s.mu must be held.
func (s *Supervisor) spawn(svc *service) (*proc, error) {
	spec := svc.spec
	svc.spawns++
	p := &proc{
		svc:      svc,
		instance: svc.spawns,
		readyCh:  make(chan struct{}),
		exited:   make(chan struct{}),
	}
	log := s.log.With(zap.String("subject", spec.ID), zap.Uint64("instance", p.instance))

	cio, err := s.openChildIO(spec)
	if err != nil {
		return nil, err
	}
	defer cio.closeChildEnds() // the child has its own copies after the fork
	p.group = s.contain(spec, p.instance, log)
	cmd := s.command(spec, cio, p.group)
	pidfd, err := s.start(cmd, log)
	if err != nil {
		if p.group != nil {
			p.group.Remove()
		}
		cio.abort()
		return nil, err
	}
	p.cmd, p.pid, p.pidfd, p.started = cmd, cmd.Process.Pid, pidfd, time.Now()
	p.page = cio.page
	if p.group != nil {
		p.group.Started(p.pid)
	}
	svc.cur = p
	s.waiters.Add(1)
	go s.wait(p)

	log = log.With(zap.Int("pid", p.pid))
	log.Info("started", zap.Strings("argv", spec.Argv))
	sess := &session{s: s, p: p, log: log}
	p.session = rpcx.NewLimitedConn(cio.session, rpcx.Recovering(oomdpb.Session_Methods(nil, sess), sess, log), log.Named("session"), SessionLimits)
	s.handOver(p, cio.second)
	return p, nil
}

// childIO is what a child inherits, made before the fork: its fds in ExtraFiles order
// (ExtraFiles[i] is fd 3+i in the child) with the environment naming them, and execd's
// ends. Every fd here is close-on-exec in execd; ExtraFiles dup2s the child's ends into
// place without the flag, so the child gets exactly these.
type childIO struct {
	extra     []*os.File
	env       []string
	childEnds []*os.File    // execd's copies of the child's socket ends (closeChildEnds)
	session   net.Conn      // execd's end of the session socket
	second    *net.UnixConn // execd's end of the broker (watchdog) or memstat delivery socket
	page      *os.File      // the memstat page, read-write (also in extra); nil: none
}

// openChildIO makes a child's session socket, its second socket (the broker connection
// for the watchdog, the memstat delivery socket for every other child) and, unless it is
// the watchdog or pages are off, its memstat page. On error nothing is left open.
func (s *Supervisor) openChildIO(spec *manifest.Service) (_ *childIO, err error) {
	c := &childIO{env: s.childEnv(spec)}
	defer func() {
		if err != nil {
			c.abort()
			c.closeChildEnds()
		}
	}()
	sessExecd, sessChild, err := rpcx.Socketpair()
	if err != nil {
		return nil, fmt.Errorf("session socket: %w", err)
	}
	c.childEnds = append(c.childEnds, sessChild)
	c.pass(sessChild, rpcx.EnvSessionFD, childSessionFD)
	if c.session, err = rpcx.FileToConn(sessExecd); err != nil {
		return nil, fmt.Errorf("session socket: %w", err)
	}

	what, envFD := "memstat delivery socket", rpcx.EnvMemstatFD
	if spec.Watchdog() {
		what, envFD = "broker socket", rpcx.EnvBrokerFD
	}
	second, secondChild, err := seqpacketForChild()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	c.second = second
	c.childEnds = append(c.childEnds, secondChild)
	c.pass(secondChild, envFD, childSecondFD)

	if !spec.Watchdog() && !s.cfg.NoPages {
		// One sealed page per instance: the child maps it read-write, the watchdog gets a
		// read-only fd with each handoff (docs/memstat-page.md).
		pg, err := page.Create("oomd-memstat:" + spec.ID)
		if err != nil {
			return nil, fmt.Errorf("memstat page: %w", err)
		}
		c.page = pg
		c.pass(pg, page.EnvFD, childPageFD)
	}
	return c, nil
}

// pass gives f to the child as fd (the next in ExtraFiles order) and names it in envName.
func (c *childIO) pass(f *os.File, envName string, fd int) {
	c.extra = append(c.extra, f)
	c.env = append(c.env, envName+"="+strconv.Itoa(fd))
}

// closeChildEnds closes execd's copies of the child's socket ends: after the fork, or
// when the child is not started.
func (c *childIO) closeChildEnds() {
	for _, f := range c.childEnds {
		f.Close()
	}
	c.childEnds = nil
}

// abort closes execd's ends and the page when the child is not started.
func (c *childIO) abort() {
	if c.session != nil {
		c.session.Close()
	}
	if c.second != nil {
		c.second.Close()
	}
	if c.page != nil {
		c.page.Close()
	}
}

// seqpacketForChild makes a SOCK_SEQPACKET pair: execd's end, and the child's end as a
// file to put in ExtraFiles (a close-on-exec dup; the child's conn is closed here).
func seqpacketForChild() (execdEnd *net.UnixConn, childEnd *os.File, err error) {
	e, c, err := rpcx.SeqpacketPair()
	if err != nil {
		return nil, nil, err
	}
	f, err := c.File()
	c.Close()
	if err != nil {
		e.Close()
		return nil, nil, err
	}
	return e, f, nil
}

// command is the child's command line, environment, stdio and fds, in its own process
// group, killed if execd dies, and placed in group (nil: uncontained).
func (s *Supervisor) command(spec *manifest.Service, cio *childIO, group *cgroup.Group) *exec.Cmd {
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = cio.env
	cmd.Stdout = s.cfg.Stdout
	cmd.Stderr = s.cfg.Stderr
	cmd.ExtraFiles = cio.extra
	pidfd := -1 // stays -1 when the kernel gives none (start)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		PidFD: &pidfd,
		// Own process group: a terminal's Ctrl-C reaches execd alone, which then stops
		// the children in order.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if cmd.Err == nil && group != nil {
		group.Prepare(cmd)
	}
	return cmd
}

// start forks cmd and returns its pidfd. The pid is marked managed under spawnMu before
// the reaper can see it exit, so the reaper never takes it for an orphan.
func (s *Supervisor) start(cmd *exec.Cmd, log *zap.Logger) (pidfd int, err error) {
	s.spawnMu.Lock()
	err = cmd.Start()
	if err == nil {
		s.managed[cmd.Process.Pid] = true
	}
	s.spawnMu.Unlock()
	if err != nil {
		log.Error("spawn failed", zap.Strings("argv", cmd.Args), zap.Error(err))
		return -1, fmt.Errorf("spawn %s: %w", cmd.Args[0], err)
	}
	if pidfd = *cmd.SysProcAttr.PidFD; pidfd < 0 {
		// Without a pidfd we could signal a recycled pid; execd needs Linux >= 5.4.
		cmd.Process.Kill()
		cmd.Wait()
		s.spawnMu.Lock()
		delete(s.managed, cmd.Process.Pid)
		s.spawnMu.Unlock()
		return -1, errors.New("spawn: the kernel returned no pidfd (Linux 5.4 or later is required)")
	}
	return pidfd, nil
}

// handOver gives execd's end of p's second socket to the broker: the watchdog's becomes
// the broker's connection, every other child's a member whose socket the watchdog gets.
// With no watchdog in the manifest it is closed, so the child sees at once that no
// connection will come rather than waiting for ever.
func (s *Supervisor) handOver(p *proc, second *net.UnixConn) {
	spec := p.svc.spec
	switch {
	case spec.Watchdog():
		s.broker.attach(second, p.instance)
	case !s.hasWatchdog:
		second.Close()
	default:
		s.broker.add(&member{
			p:          p,
			subject:    spec.ID,
			instance:   p.instance,
			pid:        int32(p.pid),
			critical:   spec.Critical,
			injectable: spec.Injectable,
			preference: oomdpb.Preference(slices.Index(manifest.Preferences, spec.Preference)),
			delivery:   second,
			group:      p.group,
			page:       p.page,
		})
		p.page = nil // the broker owns it now (it makes read-only fds from it)
	}
}

// contain makes the instance's cgroup (and sets its memory.high when the manifest asks).
// A cgroup that cannot be made does not take the service down: it runs uncontained,
// watched by what it publishes only, and the log says so with the path.
func (s *Supervisor) contain(spec *manifest.Service, instance uint64, log *zap.Logger) *cgroup.Group {
	if s.cfg.Cgroups == nil {
		return nil
	}
	g, err := s.cfg.Cgroups.Create(spec.ID, instance)
	if err != nil {
		log.Error("no cgroup for this instance: it runs uncontained, with no kernel reading",
			zap.String("parent", s.cfg.Cgroups.Base()), zap.Error(err))
		return nil
	}
	if h := spec.MemoryHigh; h != 0 {
		if err := g.SetHigh(h); err != nil {
			log.Warn("memoryHighBytes not applied", zap.Uint64("bytes", h), zap.Stringer("cgroup", g.Mode()), zap.Error(err))
		}
	}
	return g
}

// childEnv is the inherited environment without OOMD_* variables, then the manifest's
// env (sorted, so the order is deterministic), then OOMD_SUBJECT. The fd variables are
// appended by spawn.
func (s *Supervisor) childEnv(spec *manifest.Service) []string {
	env := make([]string, 0, len(s.cfg.Env)+len(spec.Env)+len(s.cfg.WatchdogEnv)+3)
	for _, kv := range s.cfg.Env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, manifest.ReservedEnvPrefix) || slices.Contains(sdnotify.Vars, name) {
			continue
		}
		if _, overridden := spec.Env[name]; overridden {
			continue
		}
		env = append(env, kv)
	}
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		env = append(env, k+"="+spec.Env[k])
	}
	if spec.Watchdog() {
		env = append(env, s.cfg.WatchdogEnv...)
	}
	return append(env, rpcx.EnvSubject+"="+spec.ID)
}

// wait reaps p (waitid on its pidfd, inside os/exec) and records the exit.
func (s *Supervisor) wait(p *proc) {
	defer s.waiters.Done()
	p.cmd.Wait() // the status is in ProcessState; a non-zero exit is not an error here
	s.spawnMu.Lock()
	delete(s.managed, p.pid)
	s.spawnMu.Unlock()
	s.nudgeReaper() // an orphan zombie may have been queued behind this one
	stragglers := s.drainGroup(p)

	ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	s.mu.Lock()
	p.done = true
	unix.Close(p.pidfd)
	if p.killTimer != nil {
		p.killTimer.Stop()
	}
	r := ExitReport{
		Subject:    p.svc.spec.ID,
		Instance:   p.instance,
		Pid:        int32(p.pid),
		Terminated: p.terminated,
		Decision:   p.decision,
	}
	if ws.Signaled() {
		r.Signal = int32(ws.Signal())
		r.Killed = p.killed && ws.Signal() == syscall.SIGKILL
	} else {
		r.ExitCode = int32(ws.ExitStatus())
	}
	p.report = r
	svc := p.svc
	if svc.cur == p {
		svc.cur = nil
	}
	s.log.Info("exited", zap.String("subject", r.Subject), zap.Uint64("instance", r.Instance),
		zap.Int32("pid", r.Pid), zap.String("status", r.describe()), zap.Bool("killed", r.Killed),
		zap.Bool("terminated", r.Terminated), zap.Int("stragglers", stragglers), zap.Duration("uptime", time.Since(p.started)))
	if p.page != nil {
		p.page.Close()
	}
	s.exits.push(r)
	if svc.spec.Watchdog() {
		s.broker.detach(p.instance)
	} else {
		s.broker.forget(p)
	}
	s.maybeRestart(p)
	s.maybeFinish(p)
	rw := s.dropRebootWatcher(p)
	close(p.exited)
	s.mu.Unlock()

	// Closing a connection can wait on its handlers (docs/capnp-traps.md, trap 2); nothing waits
	// on this goroutine.
	go func() {
		rw.Release()
		p.session.Close()
	}()
}

// drainGroup runs after p's main process was reaped and before its exit is reported:
// an instance has ended only when no process of it is left ("observed to exit" means
// the group is empty). Whatever is left gets SIGTERM, the service's stop timeout, then
// SIGKILL until the group is empty (bounded by killGrace). It returns how many
// processes were still there, and removes the cgroup.
func (s *Supervisor) drainGroup(p *proc) int {
	g := p.group
	if g == nil {
		return 0
	}
	log := s.log.With(zap.String("subject", p.svc.spec.ID), zap.Uint64("instance", p.instance), zap.String("cgroup", g.Path()))
	left, _ := g.Procs()
	if len(left) > 0 {
		timeout := p.svc.spec.StopTimeout()
		s.mu.Lock()
		kill := p.killed // a SIGKILL was already due: no second grace period
		s.mu.Unlock()
		if !kill {
			log.Info("main process exited; stopping the rest of its group", zap.Int("processes", len(left)), zap.Duration("stopTimeout", timeout))
			g.Signal(unix.SIGTERM, 0)
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err := g.WaitEmpty(ctx, false)
			cancel()
			kill = err != nil
		}
		if kill {
			log.Warn("group not empty; killing what is left", zap.String("signal", "SIGKILL"))
			ctx, cancel := context.WithTimeout(context.Background(), killGrace)
			if err := g.WaitEmpty(ctx, true); err != nil {
				log.Error("group still not empty after SIGKILL; giving up on it", zap.Error(err))
			}
			cancel()
		}
	}
	if err := g.Remove(); err != nil {
		log.Warn("could not remove the cgroup", zap.Error(err))
	}
	return len(left)
}

// maybeRestart applies the restart policy after p exited. s.mu must be held.
func (s *Supervisor) maybeRestart(p *proc) {
	svc := p.svc
	r := p.report
	switch {
	case s.shuttingDown, p.terminated, svc.cur != nil:
		return
	case svc.spec.Restart == manifest.RestartAlways:
	case svc.spec.Restart == manifest.RestartOnFailure && r.failed():
	default:
		return
	}
	if time.Since(p.started) >= RestartResetAfter {
		svc.failures = 0
	}
	svc.failures++
	delay := backoff(svc.failures)
	s.log.Info("restart scheduled", zap.String("subject", svc.spec.ID), zap.Uint64("instance", p.instance),
		zap.String("reason", r.describe()), zap.Duration("delay", delay))
	s.scheduleRestart(svc, delay)
}

func (s *Supervisor) scheduleRestart(svc *service, delay time.Duration) {
	svc.restartTimer = time.AfterFunc(delay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		svc.restartTimer = nil
		if s.shuttingDown || svc.cur != nil {
			return
		}
		if _, err := s.spawn(svc); err != nil {
			svc.failures++
			s.scheduleRestart(svc, backoff(svc.failures))
		}
	})
}

// backoff is RestartBaseDelay * 2^(failures-1), capped at RestartMaxDelay.
func backoff(failures int) time.Duration {
	d := RestartBaseDelay
	for i := 1; i < failures && d < RestartMaxDelay; i++ {
		d *= 2
	}
	return min(d, RestartMaxDelay)
}
