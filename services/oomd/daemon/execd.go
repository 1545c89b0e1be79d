package daemon

import (
	"context"
	"fmt"
	"net"
	"os"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
)

// ExecdTerminator adapts execd's Terminator capability (which only oomd's session can
// obtain) to the daemon. oomd has no other way to stop a process: it never signals a
// pid itself (security invariant 1).
type ExecdTerminator struct{ T oomdpb.Terminator }

var _ Terminator = ExecdTerminator{}

// Terminate sends the request and returns execd's refusal ("" when accepted).
func (e ExecdTerminator) Terminate(ctx context.Context, req policy.TerminateRequest) (string, error) {
	f, rel := e.T.Terminate(ctx, func(p oomdpb.Terminator_terminate_Params) error {
		p.SetInstance(req.Instance)
		p.SetDecision(req.Decision)
		if err := p.SetSubject(req.Subject); err != nil {
			return err
		}
		return p.SetReason(req.Reason)
	})
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return "", err
	}
	if r := res.Refusal(); r != oomdpb.Refusal_none {
		msg, _ := res.Detail()
		return fmt.Sprintf("%s: %s", r, truncate(msg, 200)), nil
	}
	return "", nil
}

// exitWatcher receives execd's exit reports.
type exitWatcher struct{ d *Daemon }

var _ oomdpb.ExitWatcher_Server = exitWatcher{}

// ExitWatcherClient returns the capability to give to Terminator.watchExits.
func (d *Daemon) ExitWatcherClient() oomdpb.ExitWatcher {
	w := exitWatcher{d: d}
	return oomdpb.ExitWatcher(rpcx.Recovering(oomdpb.ExitWatcher_Methods(nil, w), w, d.log))
}

func (w exitWatcher) Exited(_ context.Context, call oomdpb.ExitWatcher_exited) error {
	r, err := call.Args().Report()
	if err != nil {
		return err
	}
	subject, err := r.Subject()
	if err != nil {
		return err
	}
	reason := fmt.Sprintf("exit=%d", r.ExitCode())
	if r.Signal() != 0 {
		reason = fmt.Sprintf("signal=%d", r.Signal())
	}
	if r.Killed() {
		reason += " sigkill-after-timeout"
	}
	w.d.log.Info("execd reported exit", zap.String("subject", subject), zap.Uint64("instance", r.Instance()),
		zap.Int32("pid", r.Pid()), zap.String("reason", reason), zap.Bool("terminated", r.Terminated()))
	w.d.Exited(subject, r.Instance(), reason)
	return nil
}

// ServeBroker receives SubjectHandoffs from execd on its private broker socket until
// it closes. Each carries a socket whose peer is that subject; oomd serves a
// MemstatSink bound to the subject on it, so the subject's identity comes from execd
// and the kernel, never from anything the subject sends (security invariant 2).
func (d *Daemon) ServeBroker(ctx context.Context, broker *net.UnixConn) error {
	stop := context.AfterFunc(ctx, func() { broker.Close() })
	defer stop()
	for {
		msg, f, err := rpcx.RecvMsgFD(broker)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("broker: %w", err)
		}
		if err := d.acceptHandoff(msg, f); err != nil {
			d.log.Warn("broker: refused handoff", zap.Error(err))
		}
	}
}

func (d *Daemon) acceptHandoff(msg *capnp.Message, f *os.File) error {
	h, err := oomdpb.ReadRootSubjectHandoff(msg)
	if err != nil {
		f.Close()
		return err
	}
	subject, err := h.Subject()
	if err == nil {
		err = policy.ValidateSubjectID(subject)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("handoff subject: %w", err)
	}
	c, err := rpcx.FileToConn(f)
	if err != nil {
		return fmt.Errorf("handoff %s: passed fd: %w", subject, err)
	}
	s := &slot{subject: subject, instance: h.Instance(), critical: h.Critical(), injectable: h.Injectable()}
	ss := &sinkServer{slot: s, dirty: &d.dirty}
	sink := rpcx.Recovering(oomdpb.MemstatSink_Methods(nil, ss), ss, d.log)
	registered := make(chan struct{}) // no sample is read before the subject is registered
	s.conn = rpcx.NewLimitedConn(gatedConn{Conn: c, open: registered}, sink, d.log.With(zap.String("subject", subject)), publisherLimits)
	d.log.Info("subject handed over", zap.String("subject", subject), zap.Uint64("instance", s.instance),
		zap.Int32("pid", h.Pid()), zap.Bool("critical", s.critical))
	d.Register(s)
	close(registered)
	return nil
}

// publisherLimits are rpcx.PublisherLimits with the memstat guard (internal/guards) and a
// deadline for a started frame. No first-message deadline: a subject that never
// publishes (it does not link lib/memstat) is legitimate.
var publisherLimits = func() rpcx.Limits {
	lim := rpcx.PublisherLimits
	lim.Guard = guards.Publisher
	lim.FrameTimeout = rpcx.DefaultFrameTimeout
	return lim
}()
