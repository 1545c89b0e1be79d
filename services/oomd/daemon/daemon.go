// Package daemon is oomd's shell around the pure policy core: it feeds the core ticks,
// coalesced memstat samples, audit acknowledgements and execd's reports, and carries out
// the core's Ready in the order the core requires — audit durable first, then terminate
// via execd, then publish events.
//
// Concurrency: the core is guarded by one mutex and only ever touched with it held.
// Samples never take that mutex: sink handlers store into per-subject slots that the
// tick loop drains (see sink.go). Everything that talks to another process (logd, execd,
// subscribers, test hooks) runs outside the mutex.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/tracelog"
)

// Config is everything the daemon needs that is not a connection.
type Config struct {
	Policy       policy.Policy
	RingSize     int
	EnableInject bool
	// Markers receives the exact marker lines (stdout in production).
	Markers io.Writer
	Log     *zap.Logger
	// System wires system OOM handling (system.go).
	System SystemConfig
	// PolicyVersion is Policy's version (the persisted one, see FilePolicyStore); 0 = 1.
	PolicyVersion uint64
	// PolicyStore, if set, makes every new policy durable before it is put in force.
	PolicyStore PolicyStore
	// EventSeqBase is the highest event seq an earlier run may have used (OpenEventSeq);
	// this run's events are numbered above it.
	EventSeqBase uint64
	// DecisionBase and Durable continue an earlier run's kill decisions
	// (policy.Config; LogdAuditor.RecoverDecisions reads them back).
	DecisionBase uint64
	Durable      []policy.DurableDecision
	// EventSeq, if set, keeps the high-water mark covering every seq shown to anyone.
	EventSeq interface{ Cover(seq uint64) error }
	// Trace, if set, records every input the core steps (services/oomd/tracelog); its
	// position goes into each audit record (AuditRecord.TracePos).
	Trace *tracelog.Recorder
	// Now is the wall clock the shell stamps events and log lines for people with; nil
	// = time.Now. The core never sees it.
	Now func() time.Time
	// Alive, if set, is called by Run after every tick the core completed: the proof
	// that oomd still watches (under systemd it feeds the unit's watchdog,
	// sdnotify.Watchdog.Beat). A loop that stops ticking stops calling it.
	Alive func()
}

// Auditor makes audit records durable. Submit never blocks for long; once every record
// up to writerSeq is durable the auditor calls the ack callback given to Start.
type Auditor interface {
	Submit(recs []policy.AuditRecord)
	Start(ctx context.Context, ack func(upTo uint64)) error
}

// Terminator asks the process authority to stop a subject. The call returns when execd
// acknowledged (refusal == "") or refused.
type Terminator interface {
	Terminate(ctx context.Context, req policy.TerminateRequest) (refusal string, err error)
}

// Daemon is a running oomd.
type Daemon struct {
	cfg   Config
	log   *zap.Logger
	audit Auditor
	term  Terminator

	polMu   sync.Mutex // serialises SetPolicy (check, persist, apply)
	mu      sync.Mutex // guards core, slots, pending and the ticker period
	core    *policy.Core
	slots   map[string]*slot // live subjects by id (lookup only; never iterated for output)
	live    []*slot          // the same slots sorted by subject id: the order readings are taken in
	sampleC chan time.Duration

	dirty    dirtyList
	drainBuf []*slot
	subs     subscribers
	sys      sysState
	ctx      context.Context
	seqErr   bool // the last Cover failed (logged once until it works again)
	walls    wallStamps
	started  time.Time // when this run started (Status.startedAtNs)

	stats       shellStats           // totals for metrics (metrics.go); under mu
	tickSeconds prometheus.Histogram // each tick's duration; lock-free
}

// New builds a daemon around a fresh core.
func New(cfg Config, audit Auditor, term Terminator) (*Daemon, error) {
	core, err := policy.New(policy.Config{Policy: cfg.Policy, RingSize: cfg.RingSize, PolicyVersion: cfg.PolicyVersion,
		EventSeqBase: cfg.EventSeqBase, DecisionBase: cfg.DecisionBase, Durable: cfg.Durable})
	if err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Markers == nil {
		cfg.Markers = io.Discard
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Daemon{
		cfg:     cfg,
		log:     cfg.Log,
		audit:   audit,
		term:    term,
		core:    core,
		slots:   make(map[string]*slot),
		sampleC: make(chan time.Duration, 1),
		walls:   newWallStamps(cfg.RingSize),
		started: cfg.Now(),

		tickSeconds: newTickHistogram(),
	}
	d.sys.init()
	if cfg.Trace != nil {
		st, err := core.State()
		if err == nil {
			err = cfg.Trace.Start(st)
		}
		if err != nil {
			d.log.Error("no live trace for this run", zap.Error(err))
		}
	}
	return d, nil
}

// Start connects the auditor. Call it once, before Run and before serving anything.
func (d *Daemon) Start(ctx context.Context) error {
	d.ctx = ctx
	if err := d.audit.Start(ctx, d.auditAcked); err != nil {
		return fmt.Errorf("start auditor: %w", err)
	}
	return nil
}

// Run ticks the core until ctx ends.
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock()
	period := time.Duration(d.core.Policy().SampleMs) * time.Millisecond
	d.mu.Unlock()
	t := time.NewTicker(period)
	defer t.Stop()
	go d.runLevels(ctx)
	for {
		select {
		case <-ctx.Done():
			d.subs.closeAll()
			d.mu.Lock()
			if d.cfg.Trace != nil {
				d.cfg.Trace.Close() // flushed; later steps skip the closed trace
			}
			d.mu.Unlock()
			return nil
		case p := <-d.sampleC:
			t.Reset(p)
		case <-t.C:
			d.tick()
			if d.cfg.Alive != nil {
				d.cfg.Alive()
			}
		}
	}
}

// tick drains the coalesced samples into the core and advances it by one tick.
func (d *Daemon) tick() {
	// A duration, not a time for people: the monotonic clock, not Config.Now. Observed
	// after the mutex is released (defers run last-in first-out).
	start := time.Now()
	defer func() { d.tickSeconds.Observe(time.Since(start).Seconds()) }()
	d.drainBuf = d.dirty.take(d.drainBuf)
	// Feed in subject order so the core sees the same inputs whatever order the samples
	// raced in within this tick.
	slices.SortFunc(d.drainBuf, func(a, b *slot) int {
		switch {
		case a.subject < b.subject:
			return -1
		case a.subject > b.subject:
			return 1
		}
		return 0
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	d.readAllLocked()
	for _, s := range d.drainBuf {
		if n := s.rejected.Swap(0); n > 0 {
			s.mu.Lock()
			claimed := s.claimed
			s.mu.Unlock()
			d.stepLocked(policy.Input{Kind: policy.InputSample, Subject: s.subject, Instance: s.instance, Claimed: claimed, Count: n, Slot: s.coreSlot})
		}
		if n := s.accepted.Swap(0); n > 0 {
			d.stepLocked(policy.Input{Kind: policy.InputSample, Subject: s.subject, Instance: s.instance, Claimed: s.subject, Bytes: s.bytes.Load(), Count: n, Slot: s.coreSlot})
		}
	}
	d.stepLocked(policy.Input{Kind: policy.InputTick})
	d.processReadyLocked()
	if t := d.cfg.Trace; t != nil && t.Err() == nil {
		if err := t.Flush(); err != nil {
			d.log.Error("live trace stopped; the watchdog goes on without it", zap.Error(err))
		}
	}
}

// stepLocked feeds one input. Errors are inputs the core refused as malformed; they are
// logged, never fatal.
func (d *Daemon) stepLocked(in policy.Input) {
	if err := d.coreStep(in); err != nil {
		d.log.Warn("core refused input", zap.Stringer("kind", in.Kind), zap.String("subject", in.Subject), zap.Error(err))
	}
}

// coreStep is the one place the core is stepped (d.mu held): the input goes to the live
// trace first, so the trace holds exactly what the core saw, in order.
func (d *Daemon) coreStep(in policy.Input) error {
	if t := d.cfg.Trace; t != nil && t.Err() == nil {
		if err := t.Input(in); err != nil {
			d.log.Error("live trace stopped; the watchdog goes on without it", zap.Error(err))
		}
	}
	return d.core.Step(in)
}

// step feeds one input from outside the tick loop and executes what it produced.
func (d *Daemon) step(in policy.Input) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stepLocked(in)
	d.processReadyLocked()
	poke(d.sys.stepped)
}

// processReadyLocked executes the core's Ready in the order the core demands. Audit
// submission and terminate calls are asynchronous: their outcomes come back as inputs.
func (d *Daemon) processReadyLocked() {
	if !d.core.HasReady() {
		return
	}
	rd := d.core.Ready()
	if len(rd.Audit) > 0 {
		recs := slices.Clone(rd.Audit)
		if d.cfg.Trace != nil {
			// The inputs that led to these records end here in the live trace.
			pos := d.cfg.Trace.Position()
			for i := range recs {
				recs[i].TracePos = pos
			}
		}
		d.audit.Submit(recs)
	}
	for _, req := range rd.Terminate {
		go d.terminate(req)
	}
	d.systemReadyLocked(rd)
	if len(rd.Events) > 0 {
		d.coverSeqLocked(rd.Events[len(rd.Events)-1].Seq)
		now := d.cfg.Now().UnixNano()
		for _, e := range rd.Events {
			d.walls.put(e.Seq, now)
			d.stats.event(e.Kind)
			d.publishLocked(e)
		}
		d.subs.wake()
	}
	d.core.Advance()
	if t := d.cfg.Trace; t != nil && t.Full() {
		// Rotate: the next file starts from the state now (nothing is pending).
		st, err := d.core.State()
		if err == nil {
			err = t.Start(st)
		}
		if err != nil {
			d.log.Error("live trace stopped; the watchdog goes on without it", zap.Error(err))
		}
	}
}

// coverSeqLocked makes the high-water mark cover seq before an event with it is shown.
// A failure is logged, not fatal: the watchdog keeps working, and only a restart before
// the mark is written again can reuse the numbers above it.
func (d *Daemon) coverSeqLocked(seq uint64) {
	if d.cfg.EventSeq == nil {
		return
	}
	err := d.cfg.EventSeq.Cover(seq)
	switch {
	case err != nil && !d.seqErr:
		d.log.Error("event seq high-water mark not written: a restart may reuse event seqs", zap.Uint64("seq", seq), zap.Error(err))
	case err == nil && d.seqErr:
		d.log.Info("event seq high-water mark written again", zap.Uint64("seq", seq))
	}
	d.seqErr = err != nil
}

func (d *Daemon) publishLocked(e policy.Event) {
	fields := []zap.Field{zap.Uint64("seq", e.Seq), zap.Uint64("tick", e.Tick), zap.String("subject", e.Subject)}
	if e.Bytes != 0 {
		fields = append(fields, zap.Uint64("bytes", e.Bytes))
	}
	if e.Limit != 0 {
		fields = append(fields, zap.Uint64("limit", e.Limit))
	}
	if e.Decision != 0 {
		fields = append(fields, zap.Uint64("decision", e.Decision))
	}
	if e.Reason != "" {
		fields = append(fields, zap.String("reason", e.Reason))
	}
	// One line per event; for a decision its message says why in words (why.go), and
	// the fields carry the numbers.
	d.log.Info(why(e), append(fields, zap.String("event", e.Kind.String()))...)
	switch e.Kind {
	case policy.EventKilled:
		fmt.Fprintf(d.cfg.Markers, "oomd: kill app=%s bytes=%d\n", e.Subject, e.Bytes)
	case policy.EventKillDenied:
		fmt.Fprintf(d.cfg.Markers, "oomd: kill denied (subject=%s reason=%s)\n", e.Subject, e.Reason)
	case policy.EventMemstatUnderReported:
		fmt.Fprintf(d.cfg.Markers, "oomd: memstat under-reported app=%s kernel=%d published=%d\n", e.Subject, e.Bytes, e.Limit)
	}
}

func (d *Daemon) auditAcked(upTo uint64) {
	d.step(policy.Input{Kind: policy.InputAuditAck, Seq: upTo})
}

func (d *Daemon) terminate(req policy.TerminateRequest) {
	ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
	defer cancel()
	d.log.Info("requesting terminate", zap.String("subject", req.Subject), zap.Uint64("instance", req.Instance),
		zap.Uint64("decision", req.Decision), zap.Uint64("bytes", req.Bytes), zap.Uint64("limit", req.Limit),
		zap.String("reason", req.Reason))
	refusal, err := d.term.Terminate(ctx, req)
	switch {
	case err != nil:
		d.log.Error("terminate failed", zap.String("subject", req.Subject), zap.Uint64("decision", req.Decision), zap.Error(err))
		d.step(policy.Input{Kind: policy.InputTerminateRefused, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision, Reason: "error: " + truncate(err.Error(), 200)})
	case refusal != "":
		d.step(policy.Input{Kind: policy.InputTerminateRefused, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision, Reason: refusal})
	default:
		d.step(policy.Input{Kind: policy.InputTerminateAck, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision})
	}
}

// ErrUnknownSubject is returned for a subject oomd has no connection for.
var ErrUnknownSubject = errors.New("unknown subject")

// Register adds a subject handed over by execd. Its samples count from the next tick.
func (d *Daemon) Register(s *slot) {
	s.subjectB = []byte(s.subject)
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.slots[s.subject]; ok {
		if old.conn != nil {
			old.conn.Close()
		}
		d.dropLiveLocked(old)
	}
	d.slots[s.subject] = s
	d.addLiveLocked(s)
	d.stepLocked(policy.Input{Kind: policy.InputRegister, Subject: s.subject, Instance: s.instance, Critical: s.critical, Preference: s.preference})
	s.coreSlot = d.core.SlotOf(s.subject)
	d.processReadyLocked()
}

// Exited feeds execd's exit report and forgets that instance's connection (a newer
// instance that already registered keeps its own). decision is the kill decision whose
// terminate request the exit followed, as execd recorded it (0: none).
func (d *Daemon) Exited(subject string, instance, decision uint64, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.slots[subject]; ok && s.instance == instance {
		delete(d.slots, subject)
		d.dropLiveLocked(s)
		if s.conn != nil {
			go s.conn.Close()
		}
	}
	d.stepLocked(policy.Input{Kind: policy.InputExited, Subject: subject, Instance: instance, Decision: decision, Reason: reason})
	d.processReadyLocked()
}

// ErrPolicyChanged refuses a compare-and-set whose expected version is not in force.
var ErrPolicyChanged = errors.New("policy changed")

// SetPolicy validates and applies a new policy and returns the new version. With
// expectVersion != 0 it is a compare-and-set: nothing changes unless that version is in
// force.
func (d *Daemon) SetPolicy(p policy.Policy, expectVersion uint64) (uint64, error) {
	if err := p.Validate(); err != nil {
		return 0, err
	}
	// One change at a time, from the version check to the apply, so that what was
	// persisted is what is put in force, under the number it was persisted with.
	d.polMu.Lock()
	defer d.polMu.Unlock()
	d.mu.Lock()
	cur := d.core.PolicyVersion()
	d.mu.Unlock()
	if expectVersion != 0 && cur != expectVersion {
		return 0, fmt.Errorf("%w: version %d is in force, not %d; read it again and retry", ErrPolicyChanged, cur, expectVersion)
	}
	if d.cfg.PolicyStore != nil {
		// Durable first (fsync'ed; no lock held): a restart comes back with it.
		if err := d.cfg.PolicyStore.Save(p, cur+1); err != nil {
			return 0, fmt.Errorf("policy not changed: %w", err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.core.Policy().SampleMs
	if err := d.coreStep(policy.Input{Kind: policy.InputPolicy, Policy: &p}); err != nil {
		return 0, err
	}
	d.processReadyLocked()
	poke(d.sys.policyC)
	if p.SampleMs != old {
		select {
		case d.sampleC <- time.Duration(p.SampleMs) * time.Millisecond:
		default:
			<-d.sampleC
			d.sampleC <- time.Duration(p.SampleMs) * time.Millisecond
		}
	}
	return d.core.PolicyVersion(), nil
}

// maxWhatIf bounds a what-if's answer (events).
const maxWhatIf = 1024

// WhatIf returns what p would do now, against the live state, without changing anything:
// a copy of the core (policy.Restore of its State) takes p and one tick, and its events
// are returned (at most maxWhatIf), with the version in force.
func (d *Daemon) WhatIf(p policy.Policy) ([]policy.Event, uint64, error) {
	if err := p.Validate(); err != nil {
		return nil, 0, err
	}
	d.mu.Lock()
	st, err := d.core.State()
	v := d.core.PolicyVersion()
	d.mu.Unlock()
	if err != nil {
		return nil, 0, fmt.Errorf("what-if: %w", err)
	}
	c, err := policy.Restore(st)
	if err != nil {
		return nil, 0, fmt.Errorf("what-if: %w", err)
	}
	var evs []policy.Event
	for _, in := range []policy.Input{{Kind: policy.InputPolicy, Policy: &p}, {Kind: policy.InputTick}} {
		if err := c.Step(in); err != nil {
			return nil, 0, fmt.Errorf("what-if: %w", err)
		}
		evs = append(evs, c.Ready().Events...)
		c.Advance()
	}
	return evs[:min(len(evs), maxWhatIf)], v, nil
}

// events reads the core's ring like policy.Core.Events, with each event's wall time.
func (d *Daemon) events(since uint64, limit int) (evs []policy.Event, next, missed uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	evs, next, missed = d.core.Events(since, limit)
	d.walls.stamp(evs)
	return evs, next, missed
}

// withCore runs f with the core locked, for read-only queries.
func (d *Daemon) withCore(f func(c *policy.Core)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d.core)
}

func (d *Daemon) slot(subject string) (*slot, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.slots[subject]
	return s, ok
}
