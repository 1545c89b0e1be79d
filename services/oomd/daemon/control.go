package daemon

import (
	"context"
	"errors"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// Errors a control client can get; their text is what the client sees.
var (
	ErrInjectDisabled     = errors.New("inject is disabled: it exists for tests only; start oomd with --enable-inject to allow it")
	errTooManySubscribers = fmt.Errorf("too many subscribers (at most %d)", maxSubscribers)
)

// MaxInjectBytes bounds one inject request.
const MaxInjectBytes = 1 << 30

// controlServer is oomd's control API; one per control connection.
type controlServer struct{ d *Daemon }

var _ oomdpb.Control_Server = (*controlServer)(nil)

// ControlClient returns a new Control capability backed by d, for one connection.
func (d *Daemon) ControlClient() capnp.Client {
	s := &controlServer{d: d}
	return rpcx.Recovering(oomdpb.Control_Methods(nil, s), s, d.log)
}

func (s *controlServer) SetPolicy(_ context.Context, call oomdpb.Control_setPolicy) error {
	src, err := call.Args().Policy()
	if err != nil {
		return fmt.Errorf("setPolicy: read policy: %w", err)
	}
	p, err := wire.Policy(src)
	if err != nil {
		return err // names the field and the bound; the old policy stays in force
	}
	var (
		evs []policy.Event
		v   uint64
	)
	dryRun := call.Args().DryRun()
	if dryRun {
		evs, v, err = s.d.WhatIf(p)
	} else {
		v, err = s.d.SetPolicy(p, call.Args().ExpectVersion())
	}
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetVersion(v)
	if !dryRun {
		return nil
	}
	l, err := wire.NewEventList(res.Segment(), evs)
	if err != nil {
		return err
	}
	return res.SetWouldDo(l)
}

func (s *controlServer) GetPolicy(_ context.Context, call oomdpb.Control_getPolicy) error {
	var p policy.Policy
	var v uint64
	if err := s.d.inspect(func(c *policy.Core) { p, v = c.Policy(), c.PolicyVersion() }); err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	dst, err := res.NewPolicy()
	if err != nil {
		return err
	}
	res.SetVersion(v)
	return wire.SetPolicy(dst, p)
}

func checkLimit(limit uint32) error {
	if limit < 1 || limit > wire.MaxPage {
		return fmt.Errorf("limit = %d: must be in 1..%d", limit, wire.MaxPage)
	}
	return nil
}

func (s *controlServer) Events(_ context.Context, call oomdpb.Control_events) error {
	args := call.Args()
	if err := checkLimit(args.Limit()); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	evs, next, missed, err := s.d.events(args.SinceSeq(), int(args.Limit()))
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetNextSeq(next)
	return wire.SetEventBatch(res, evs, missed)
}

func (s *controlServer) Subscribe(_ context.Context, call oomdpb.Control_subscribe) error {
	args := call.Args()
	client := args.Subscriber()
	if !client.IsValid() {
		return errors.New("subscribe: subscriber capability is null")
	}
	cancel, err := s.d.subscribe(client.AddRef(), args.SinceSeq())
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	res, err := call.AllocResults()
	if err != nil {
		cancel()
		return err
	}
	return res.SetSubscription(newSubscription(cancel))
}

func (s *controlServer) Inject(ctx context.Context, call oomdpb.Control_inject) error {
	if !s.d.cfg.EnableInject {
		return ErrInjectDisabled
	}
	args := call.Args()
	app, err := args.AppId()
	if err != nil {
		return fmt.Errorf("inject: read appId: %w", err)
	}
	n := args.Bytes()
	if n < 1 || n > MaxInjectBytes {
		return fmt.Errorf("inject: bytes = %d: must be in 1..%d", n, MaxInjectBytes)
	}
	sl, ok := s.d.slot(app)
	if !ok {
		return fmt.Errorf("inject: %w %q: no running subject with that id", ErrUnknownSubject, app)
	}
	if !sl.injectable || sl.conn == nil {
		return fmt.Errorf("inject: subject %q is not injectable (its manifest entry does not set injectable)", app)
	}
	// The hook lives in another process: do not hold this connection's call queue.
	call.Go()
	hook := oomdpb.TestHook(sl.conn.Bootstrap(ctx))
	defer hook.Release()
	f, rel := hook.Inject(ctx, func(p oomdpb.TestHook_inject_Params) error { p.SetBytes(n); return nil })
	defer rel()
	got, err := f.Struct()
	if err != nil {
		return fmt.Errorf("inject: test hook of %q: %w", app, err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetTotalBytes(got.TotalBytes())
	return nil
}

// maxStatusSubjects bounds the subject list in one status answer.
const maxStatusSubjects = 1024

func (s *controlServer) Status(_ context.Context, call oomdpb.Control_status) error {
	var st wire.Status
	err := s.d.inspect(func(c *policy.Core) {
		subjects, truncated := c.Subjects(maxStatusSubjects)
		counters := c.Counters()
		level, avail := c.Level()
		st = wire.Status{
			Tick: c.TickCount(), PolicyVersion: c.PolicyVersion(), LastEventSeq: c.LastSeq(), EventSeqBase: c.EventSeqBase(),
			StartedAtNs: s.d.started.UnixNano(), Truncated: truncated,
			Kills: counters.Kills, Denied: counters.Denied, Throttled: counters.Throttled,
			RejectedSamples: counters.Rejected, AcceptedSamples: counters.Accepted,
			InjectEnabled: s.d.cfg.EnableInject, Level: oomdpb.PressureLevel(level), MemAvailableBytes: avail,
			HaltClaimed: c.Halt().Claimed, AuditWaiting: c.AuditProduced() - c.AuditDurable(),
			Subjects: make([]wire.SubjectStatus, len(subjects)),
		}
		if v, _ := c.VictimPreview(); v.Subject != "" { // else all three stay empty: no subject is a candidate
			st.Victim, st.VictimReason, st.VictimHold = v.Subject, v.Reason, v.Hold
		}
		for i, ss := range subjects {
			var mode oomdpb.CgroupMode
			if sl, ok := s.d.slots[ss.Subject]; ok && sl.kernel != nil {
				mode = sl.kernel.Mode()
			}
			st.Subjects[i] = wire.SubjectStatusOf(ss, mode)
		}
	})
	if err != nil {
		return err
	}
	if as, ok := s.d.audit.(interface{ State() (bool, int) }); ok {
		connected, spilled := as.State()
		st.AuditLogdDown = !connected
		st.AuditSpilled = uint64(spilled)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	dst, err := res.NewStatus()
	if err != nil {
		return err
	}
	return wire.SetStatus(dst, st)
}

func (s *controlServer) Audit(ctx context.Context, call oomdpb.Control_audit) error {
	args := call.Args()
	if err := checkLimit(args.Limit()); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	j, ok := s.d.audit.(interface{ Journal() (oomdpb.Journal, bool) })
	if !ok {
		return errors.New("audit: no journal is connected")
	}
	journal, ok := j.Journal()
	if !ok {
		return errors.New("audit: logd is not connected")
	}
	defer journal.Release()
	call.Go()
	f, rel := journal.Read(ctx, func(p oomdpb.Journal_read_Params) error {
		p.SetSinceSeq(args.SinceSeq())
		p.SetLimit(args.Limit())
		return nil
	})
	defer rel()
	got, err := f.Struct()
	if err != nil {
		return fmt.Errorf("audit: read logd: %w", err)
	}
	entries, err := got.Entries()
	if err != nil {
		return fmt.Errorf("audit: read logd: %w", err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetNextSeq(got.NextSeq())
	res.SetMissed(got.Missed())
	return res.SetEntries(entries) // deep-copied into our message
}

func (s *controlServer) LastReboot(_ context.Context, call oomdpb.Control_lastReboot) error {
	var r wire.RebootRecord // none: valid=false, reason unknown
	if rec, ok := s.d.cfg.System.Boot.LastReboot(); ok {
		r = wire.RebootRecord{Valid: true, Reason: oomdpb.RebootReason(rec.Reason), Graceful: rec.Graceful,
			TeardownMs: rec.TeardownMs, NotStopped: rec.NotStopped, BootCount: rec.BootCount}
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	dst, err := res.NewRecord()
	if err != nil {
		return err
	}
	return wire.SetRebootRecord(dst, r)
}

func (s *controlServer) WatchLevels(_ context.Context, call oomdpb.Control_watchLevels) error {
	w := call.Args().Watcher()
	if !w.IsValid() {
		return errors.New("watchLevels: watcher capability is null")
	}
	level, cancel, err := s.d.watchLevels(w.AddRef())
	if err != nil {
		return fmt.Errorf("watchLevels: %w", err)
	}
	res, err := call.AllocResults()
	if err != nil {
		cancel()
		return err
	}
	res.SetLevel(oomdpb.PressureLevel(level))
	return res.SetSubscription(newSubscription(cancel))
}

func (s *controlServer) RequestReboot(_ context.Context, call oomdpb.Control_requestReboot) error {
	var reason string
	switch r := call.Args().Reason(); r {
	case oomdpb.RebootReason_userRequest:
		reason = policy.RebootUserRequest
	case oomdpb.RebootReason_oom:
		reason = policy.RebootOOM
	default:
		return fmt.Errorf("requestReboot: reason %s: want userRequest or oom", r)
	}
	return s.d.RequestReboot(reason)
}
