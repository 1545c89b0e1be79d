package supervisor

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/bounds"
	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/subjectid"
)

// MaxReasonBytes bounds terminate's reason (as the audit record's reason).
const MaxReasonBytes = bounds.MaxReasonBytes

// session is a child's bootstrap object. It is bound to one proc at spawn; nothing the
// child sends selects another identity.
type session struct {
	s   *Supervisor
	p   *proc
	log *zap.Logger
}

var _ oomdpb.Session_Server = (*session)(nil)

func (ss *session) Whoami(_ context.Context, call oomdpb.Session_whoami) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetInstance(ss.p.instance)
	res.SetCritical(ss.p.svc.spec.Critical)
	return res.SetSubject(ss.p.svc.spec.ID)
}

func (ss *session) Ready(context.Context, oomdpb.Session_ready) error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if !ss.p.ready {
		ss.p.ready = true
		if !ss.p.svc.wasReady {
			ss.p.svc.wasReady = true
			close(ss.p.svc.firstReady)
		}
		ss.log.Info("ready")
		close(ss.p.readyCh)
	}
	return nil
}

func (ss *session) Grants(_ context.Context, call oomdpb.Session_grants) error {
	spec := ss.p.svc.spec
	if !spec.Watchdog() {
		ss.log.Warn("grants refused: not the watchdog")
		return fmt.Errorf("grants: subject %s is not the watchdog; only the manifest's watchdog service gets the Terminator", spec.ID)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	log := ss.log.Named("terminator")
	if err := res.SetTerminator(newTerminator(&terminator{s: ss.s, log: log})); err != nil {
		return err
	}
	ss.log.Info("granted Terminator and SystemControl")
	return res.SetSystem(newSystemControl(&systemControl{s: ss.s, p: ss.p, log: ss.log.Named("system")}))
}

// WatchReboot registers the child's reboot watcher (any child may): it is told before a
// teardown stops services, and reported under this session's subject if it is late.
func (ss *session) WatchReboot(_ context.Context, call oomdpb.Session_watchReboot) error {
	return ss.s.watchReboot(ss.p, call.Args().Watcher())
}

// terminator is the Terminator capability, handed out only through the watchdog's
// session.
type terminator struct {
	s   *Supervisor
	log *zap.Logger
}

var _ oomdpb.Terminator_Server = (*terminator)(nil)

func (t *terminator) Terminate(_ context.Context, call oomdpb.Terminator_terminate) error {
	args := call.Args()
	subject, err := args.Subject()
	if err != nil {
		return fmt.Errorf("terminate: subject: %w", err)
	}
	reason, err := args.Reason()
	if err != nil {
		return fmt.Errorf("terminate: reason: %w", err)
	}
	if len(reason) > MaxReasonBytes || !utf8.ValidString(reason) {
		return fmt.Errorf("terminate: reason must be valid UTF-8 of at most %d bytes (got %d)", MaxReasonBytes, len(reason))
	}
	refusal, msg, pid := t.s.terminate(subject, args.Instance(), args.Decision(), reason)
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetRefusal(refusal)
	res.SetPid(pid)
	return res.SetDetail(msg)
}

func (t *terminator) WatchExits(_ context.Context, call oomdpb.Terminator_watchExits) error {
	w := call.Args().Watcher()
	if !w.IsValid() {
		return fmt.Errorf("watchExits: watcher is a null capability")
	}
	// Params are released when this returns (docs/capnp-traps.md, trap 7): keep our own ref.
	t.s.exits.setWatcher(w.AddRef())
	t.log.Info("exit watcher registered")
	return nil
}

// terminate decides on and starts one termination. It never blocks on the child.
func (s *Supervisor) terminate(subject string, instance, decision uint64, reason string) (oomdpb.Refusal, string, int32) {
	log := s.log.With(zap.String("subject", subject), zap.Uint64("instance", instance),
		zap.Uint64("decision", decision), zap.String("reason", reason))
	refuse := func(r oomdpb.Refusal, format string, a ...any) (oomdpb.Refusal, string, int32) {
		msg := fmt.Sprintf(format, a...)
		log.Warn("terminate refused", zap.Stringer("refusal", r), zap.String("message", msg))
		return r, msg, 0
	}
	if err := subjectid.Validate(subject); err != nil {
		return refuse(oomdpb.Refusal_unknown, "no subject %q: a subject id is %v", subject, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, ok := s.services[subject]
	switch {
	case !ok:
		return refuse(oomdpb.Refusal_unknown, "no subject %q in the manifest", subject)
	case svc.spec.Critical:
		return refuse(oomdpb.Refusal_critical, "subject %s is critical: execd never terminates it", subject)
	case s.shuttingDown:
		return refuse(oomdpb.Refusal_shuttingDown, "system teardown in progress")
	}
	p := svc.cur
	switch {
	case p == nil:
		return refuse(oomdpb.Refusal_notRunning, "subject %s is not running", subject)
	case p.instance != instance:
		return refuse(oomdpb.Refusal_notRunning, "subject %s instance %d is not running (current instance %d)", subject, instance, p.instance)
	case p.terminated:
		log.Info("terminate repeated; already in progress", zap.Int("pid", p.pid))
		return oomdpb.Refusal_none, "already terminating", int32(p.pid)
	}
	log = log.With(zap.Int("pid", p.pid))
	p.terminated, p.decision = true, decision
	if err := s.signalAll(p, unix.SIGTERM); err != nil {
		// It exited on its own; its waiter has not recorded that yet.
		p.terminated, p.decision = false, 0
		return refuse(oomdpb.Refusal_notRunning, "subject %s instance %d already exited", subject, instance)
	}
	timeout := svc.spec.StopTimeout()
	log.Info("terminating", zap.String("signal", "SIGTERM"), zap.Duration("stopTimeout", timeout))
	p.killTimer = time.AfterFunc(timeout, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if p.done {
			return
		}
		p.killed = true
		log.Warn("stop timeout passed; killing", zap.String("signal", "SIGKILL"))
		if err := s.signalAll(p, unix.SIGKILL); err != nil {
			log.Warn("SIGKILL failed", zap.Error(err))
		}
	})
	return oomdpb.Refusal_none, "", int32(p.pid)
}

// SessionLimits apply to every child's session connection: the default limits and the
// session guard (internal/guards), so nothing a child sends outside what Session,
// Terminator and SystemControl need reaches go-capnp.
var SessionLimits = func() rpcx.Limits {
	lim := rpcx.DefaultLimits
	lim.Guard = guards.Session
	lim.FrameTimeout = rpcx.DefaultFrameTimeout // no first-message deadline: a child may never call
	return lim
}()

func newTerminator(t *terminator) oomdpb.Terminator {
	return oomdpb.Terminator(rpcx.Recovering(oomdpb.Terminator_Methods(nil, t), t, t.log))
}

func newSystemControl(sc *systemControl) oomdpb.SystemControl {
	return oomdpb.SystemControl(rpcx.Recovering(oomdpb.SystemControl_Methods(nil, sc), sc, sc.log))
}
