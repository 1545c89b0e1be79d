package daemon

import (
	"context"
	"errors"
	"fmt"
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
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// systemReady carries out the system part of a Ready: start the halt bound, start the
// teardown, finish the sequence, tell level watchers. Nothing here blocks.
func (d *Daemon) systemReady(rd policy.Ready) {
	for _, t := range rd.HaltTimer {
		// The core counts the bound in ticks; this timer is the same bound on the wall
		// clock, so a tick loop that falls behind cannot stretch it.
		if err := d.clocks.startHalt(time.Duration(t.Ms) * time.Millisecond); err != nil {
			d.log.Error("halt bound not armed: the core's bound in ticks alone ends the halt", zap.Error(err))
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
		// The wait is a maximum: an acknowledgement ends it at once.
		go d.reboot(rd.Reboot[0], lastAudit, d.clocks.endHalt())
	}
	levelChanged := uint64(0)
	for _, e := range rd.Events {
		if e.Kind == policy.EventLevelChanged {
			levelChanged = e.Seq
		}
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
	d.send(policy.Input{Kind: policy.InputTeardownDone, Graceful: rep.Graceful, NotStopped: rep.NotStopped})
}

// reboot persists the outcome and runs the reboot action; took is the time from the
// claim to the outcome.
func (d *Daemon) reboot(o policy.RebootOutcome, auditSeq uint64, took time.Duration) {
	teardownMs := uint32(min(took.Milliseconds(), int64(^uint32(0))))
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
	done, err := query(d, func() <-chan struct{} { return d.afterDurable(seq) })
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(d.ctx, grace)
	defer cancel()
	return d.awaitDurable(ctx, done) == nil
}

// levelReader reads MemAvailable and memory pressure for the levels, on the loop.
type levelReader struct {
	meminfo             *sysoom.MeminfoReader
	psi                 *sysoom.PSIReader
	lastErr, lastPSIErr string // the last failure said, so a missing file does not flood the log
}

func newLevelReader(cfg SystemConfig) levelReader {
	return levelReader{meminfo: sysoom.NewMeminfoReader(cfg.Meminfo), psi: sysoom.NewPSIReader(cfg.PSI)}
}

// sampleLevels steps MemAvailable, and memory pressure when the policy sets PSI
// thresholds, into the core: on every tick when the level interval is the tick's,
// on the level clock otherwise (loop.go).
func (d *Daemon) sampleLevels() {
	r := &d.levels
	n, err := r.meminfo.ReadMemAvailable()
	if !d.sampled(&r.lastErr, "level sample skipped", err) {
		return
	}
	d.feed(policy.Input{Kind: policy.InputMemAvailable, Bytes: n})
	if !d.clocks.psi {
		return
	}
	full, err := r.psi.ReadFull()
	if !d.sampled(&r.lastPSIErr, "memory pressure (PSI) sample skipped; levels follow MemAvailable alone", err) {
		return
	}
	d.feed(policy.Input{Kind: policy.InputPressure, Pressure: full})
}

// sampled reports whether a reading worked (err nil). A failure is logged under msg once
// while it repeats (*last holds the last one logged; a success clears it).
func (d *Daemon) sampled(last *string, msg string, err error) bool {
	if err == nil {
		*last = ""
		return true
	}
	if s := err.Error(); s != *last {
		d.log.Warn(msg, zap.Error(err))
		*last = s
	}
	return false
}

// ErrHaltClaimed is wrapped by RequestReboot when the token was already claimed.
var ErrHaltClaimed = errors.New("reboot refused")

// RequestReboot claims the halt token for reason and starts the sequence, or fails
// (the refusal is recorded as a haltRefused event and audit record) when it is already
// claimed. It returns once the claim is made; the sequence runs on.
func (d *Daemon) RequestReboot(reason string) error {
	var (
		h   policy.HaltStatus
		err error
	)
	if err := d.do(func() {
		h = d.core.Halt()
		err = d.coreStep(policy.Input{Kind: policy.InputRebootRequest, Reason: reason})
	}); err != nil {
		return err
	}
	if err != nil {
		return err
	}
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
