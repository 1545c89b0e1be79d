package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/sysoom"
)

// This file is the shell's side of system OOM: it samples MemAvailable into the core,
// and carries out the core's HaltRequest and RebootOutcome. The decisions (levels,
// the one halt token, the bound) are the core's; here is only what needs I/O.

// SystemControl is execd's teardown as the daemon uses it.
type SystemControl interface {
	// Teardown asks execd to notify reboot watchers and stop every service; its return
	// is the acknowledgement.
	Teardown(ctx context.Context, reason string) (TeardownReport, error)
}

// TeardownReport is execd's answer to Teardown.
type TeardownReport struct {
	Graceful         bool
	TeardownMs       uint32
	NotStopped       []string
	WatchersTimedOut []string
}

// SystemConfig wires the daemon to the machine. Every field is optional: without
// Control the bound ends every sequence, without Boot nothing is persisted, without
// Reboot the daemon stays up after the outcome.
type SystemConfig struct {
	Control SystemControl
	Boot    *sysoom.Boot
	// Meminfo is read for MemAvailable every levels.intervalMs (sysoom.DefaultMeminfo
	// when empty), only while the policy enables levels.
	Meminfo string
	// PSI is read for memory pressure (sysoom.DefaultPSI when empty) at the same times,
	// only while the policy sets PSI thresholds.
	PSI string
	// Reboot runs the reboot action. It is called once, after the record is durable and
	// the outcome's audit record is durable or AuditGrace passed; it need not return.
	Reboot func()
	// AuditGrace bounds the wait for the outcome's audit record (logd may be gone);
	// 0 means DefaultAuditGrace.
	AuditGrace time.Duration
}

// DefaultAuditGrace is how long the reboot waits for the outcome's audit record to
// become durable. It is the only time the reboot can lag the bound.
const DefaultAuditGrace = time.Second

// sysState is the daemon's system-OOM state beside the core.
type sysState struct {
	watchers levelWatchers

	stepped chan struct{} // poked after every input from outside the tick (acks among them)
	policyC chan struct{} // poked on every policy change

	mu        sync.Mutex
	claimedAt time.Time   // wall clock of the claim, for teardownMs
	bound     *time.Timer // the bound on the wall clock (InputHaltTimeout)
}

func (s *sysState) init() {
	s.stepped = make(chan struct{}, 1)
	s.policyC = make(chan struct{}, 1)
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// systemReadyLocked carries out the system part of a Ready: note the claim time, start
// the teardown, finish the sequence, tell level watchers. Nothing here blocks.
func (d *Daemon) systemReadyLocked(rd policy.Ready) {
	levelChanged := uint64(0)
	for _, e := range rd.Events {
		switch e.Kind {
		case policy.EventHaltClaimed:
			// The core counts the bound in ticks; this timer is the same bound on the
			// wall clock, so a tick loop that falls behind cannot stretch it.
			ms := d.core.Policy().OOMTimeoutMs
			if ms == 0 {
				ms = policy.DefaultOOMTimeout
			}
			d.sys.mu.Lock()
			d.sys.claimedAt = time.Now()
			d.sys.bound = time.AfterFunc(time.Duration(ms)*time.Millisecond, func() {
				d.step(policy.Input{Kind: policy.InputHaltTimeout})
			})
			d.sys.mu.Unlock()
		case policy.EventLevelChanged:
			levelChanged = e.Seq
		}
	}
	for _, h := range rd.Halt {
		go d.teardown(h)
	}
	if len(rd.Reboot) > 0 {
		var lastAudit uint64
		if n := len(rd.Audit); n > 0 {
			lastAudit = rd.Audit[n-1].WriterSeq
		}
		go d.reboot(rd.Reboot[0], lastAudit)
	}
	if levelChanged != 0 {
		l, avail := d.core.Level()
		d.sys.watchers.notify(levelNote{level: l, avail: avail, seq: levelChanged})
	}
}

// teardown runs one HaltRequest: mark the store in progress, ask execd, and feed its
// acknowledgement back. The core holds the bound; an error here just means no
// acknowledgement, and the bound ends the sequence.
func (d *Daemon) teardown(h policy.HaltRequest) {
	log := d.log.With(zap.String("reason", h.Reason), zap.Uint64("tick", h.Tick), zap.Uint64("timeoutTicks", h.TimeoutTicks))
	if err := d.cfg.System.Boot.InProgress(sysoom.ParseReason(h.Reason)); err != nil {
		log.Error("could not mark the reboot record in progress", zap.Error(err))
	}
	if d.cfg.System.Control == nil {
		log.Warn("no SystemControl: nothing to tear down; the bound ends the sequence")
		return
	}
	log.Info("asking execd to tear the system down")
	rep, err := d.cfg.System.Control.Teardown(d.ctx, h.Reason)
	if err != nil {
		log.Error("teardown failed; the bound ends the sequence", zap.Error(err))
		return
	}
	log.Info("execd acknowledged the teardown", zap.Bool("graceful", rep.Graceful), zap.Uint32("execdTeardownMs", rep.TeardownMs),
		zap.Strings("notStopped", rep.NotStopped), zap.Strings("watchersTimedOut", rep.WatchersTimedOut))
	d.step(policy.Input{Kind: policy.InputTeardownDone, Graceful: rep.Graceful, NotStopped: rep.NotStopped})
}

// reboot persists the outcome and runs the reboot action.
func (d *Daemon) reboot(o policy.RebootOutcome, auditSeq uint64) {
	d.sys.mu.Lock()
	ms := time.Since(d.sys.claimedAt).Milliseconds()
	if d.sys.bound != nil {
		d.sys.bound.Stop() // the wait is a maximum: an ack cancels it at once
	}
	d.sys.mu.Unlock()
	teardownMs := uint32(min(ms, int64(^uint32(0))))
	log := d.log.With(zap.String("reason", o.Reason), zap.Bool("graceful", o.Graceful), zap.Bool("timedOut", o.TimedOut),
		zap.Strings("notStopped", o.NotStopped), zap.Uint64("ticks", o.Ticks), zap.Uint32("teardownMs", teardownMs))
	if err := d.cfg.System.Boot.Complete(sysoom.ParseReason(o.Reason), o.Graceful, teardownMs, o.NotStopped); err != nil {
		log.Error("could not persist the reboot record", zap.Error(err))
	}
	grace := d.cfg.System.AuditGrace
	if grace == 0 {
		grace = DefaultAuditGrace
	}
	if !d.waitDurable(auditSeq, grace) {
		log.Warn("the outcome's audit record is not durable; rebooting anyway", zap.Uint64("seq", auditSeq), zap.Duration("waited", grace))
	}
	fmt.Fprintf(d.cfg.Markers, "oomd: rebooting reason=%s graceful=%t timedOut=%t teardownMs=%d\n", o.Reason, o.Graceful, o.TimedOut, teardownMs)
	log.Info("rebooting")
	if d.cfg.System.Reboot != nil {
		d.cfg.System.Reboot()
	}
}

// waitDurable waits until audit record seq is durable (in logd or the spill file), at
// most grace.
func (d *Daemon) waitDurable(seq uint64, grace time.Duration) bool {
	t := time.NewTimer(grace)
	defer t.Stop()
	for {
		var durable uint64
		d.withCore(func(c *policy.Core) { durable = c.AuditDurable() })
		if durable >= seq {
			return true
		}
		select {
		case <-d.sys.stepped:
		case <-t.C:
			return false
		case <-d.ctx.Done():
			return false
		}
	}
}

// runLevels samples MemAvailable into the core every levels.intervalMs (sampleMs when
// 0) while the policy enables levels, and idles otherwise.
func (d *Daemon) runLevels(ctx context.Context) {
	m := sysoom.NewMeminfoReader(d.cfg.System.Meminfo)
	psi := sysoom.NewPSIReader(d.cfg.System.PSI)
	var lastErr, lastPSIErr string
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		d.mu.Lock()
		p := d.core.Policy()
		d.mu.Unlock()
		var wait <-chan time.Time
		if p.Levels.Enabled() {
			ms := p.Levels.IntervalMs
			if ms == 0 {
				ms = p.SampleMs
			}
			t.Reset(time.Duration(ms) * time.Millisecond)
			wait = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-d.sys.policyC:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
			continue
		case <-wait:
		}
		n, err := m.ReadMemAvailable()
		if err != nil {
			// Said once per distinct failure: a missing file must not flood the log.
			if err.Error() != lastErr {
				d.log.Warn("level sample skipped", zap.Error(err))
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		d.step(policy.Input{Kind: policy.InputMemAvailable, Bytes: n})
		if !p.Levels.PSIEnabled() {
			continue
		}
		full, err := psi.ReadFull()
		if err != nil {
			if err.Error() != lastPSIErr {
				d.log.Warn("memory pressure (PSI) sample skipped; levels follow MemAvailable alone", zap.Error(err))
				lastPSIErr = err.Error()
			}
			continue
		}
		lastPSIErr = ""
		d.step(policy.Input{Kind: policy.InputPressure, Pressure: full})
	}
}

// ErrHaltClaimed is wrapped by RequestReboot when the token was already claimed.
var ErrHaltClaimed = errors.New("reboot refused")

// RequestReboot claims the halt token for reason and starts the sequence, or fails
// (the refusal is recorded as a haltRefused event and audit record) when it is already
// claimed. It returns once the claim is made; the sequence runs on.
func (d *Daemon) RequestReboot(reason string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.core.Halt()
	if err := d.coreStep(policy.Input{Kind: policy.InputRebootRequest, Reason: reason}); err != nil {
		return err
	}
	d.processReadyLocked()
	if h.Claimed {
		return fmt.Errorf("%w: %s", ErrHaltClaimed, h.HaltRefusal())
	}
	d.log.Info("reboot requested; halt token claimed", zap.String("reason", reason))
	return nil
}

// ExecdSystem adapts execd's SystemControl capability.
type ExecdSystem struct{ S oomdpb.SystemControl }

var _ SystemControl = ExecdSystem{}

// Teardown calls SystemControl.teardown and reads its report.
func (e ExecdSystem) Teardown(ctx context.Context, reason string) (TeardownReport, error) {
	r := oomdpb.RebootReason_unknown
	switch reason {
	case policy.RebootOOM:
		r = oomdpb.RebootReason_oom
	case policy.RebootUserRequest:
		r = oomdpb.RebootReason_userRequest
	}
	f, rel := e.S.Teardown(ctx, func(p oomdpb.SystemControl_teardown_Params) error { p.SetReason(r); return nil })
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return TeardownReport{}, fmt.Errorf("teardown: %w", err)
	}
	rep, err := res.Report()
	if err != nil {
		return TeardownReport{}, fmt.Errorf("teardown: report: %w", err)
	}
	out := TeardownReport{Graceful: rep.Graceful(), TeardownMs: rep.TeardownMs()}
	if out.NotStopped, err = textList(rep.NotStopped()); err != nil {
		return out, fmt.Errorf("teardown: report.notStopped: %w", err)
	}
	if out.WatchersTimedOut, err = textList(rep.WatchersTimedOut()); err != nil {
		return out, fmt.Errorf("teardown: report.watchersTimedOut: %w", err)
	}
	return out, nil
}

// maxReportNames bounds the names read from one report list; the core keeps fewer.
const maxReportNames = 1024

func textList(l interface {
	Len() int
	At(int) (string, error)
}, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	if l.Len() > maxReportNames {
		return nil, fmt.Errorf("%d names: at most %d", l.Len(), maxReportNames)
	}
	out := make([]string, 0, l.Len())
	for i := range l.Len() {
		s, err := l.At(i)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
