// Package daemon is oomd's shell around the pure policy core: it feeds the core ticks,
// coalesced memstat samples, audit acknowledgements and execd's reports, and carries out
// the core's Ready in the order the core requires — audit durable first, then terminate
// via execd, then publish events.
//
// Concurrency: one goroutine, the owner loop (Run, loop.go), owns the core and
// everything stepped with it; there is no lock around the core. The loop sleeps on one
// epoll set (internal/loopwait): its clocks — ticks, the level clock, the halt bound —
// and a bell that other goroutines ring after queuing answers (audit acks, terminate
// answers, teardown) and calls (registrations, exits, policy changes, queries) on its
// channels. Every action leaves as a field of the core's Ready.
// Samples never wait for the loop: sink handlers store into per-subject slots that the
// tick drains (sink.go). Everything that talks to another process (logd, execd,
// subscribers, test hooks) runs on goroutines of its own and answers on the loop's
// channels.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"oomd.dev/oomd/internal/loopwait"
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

	polMu sync.Mutex // serialises SetPolicy (check, persist, apply); not a lock on the core

	// The owner loop's inputs (loop.go).
	in      chan policy.Input // answers from other goroutines, in the order they came
	calls   chan call         // work run on the loop: registrations, exits, policy, queries
	stopped chan struct{}     // closed when the loop has ended
	wait    *loopwait.Waiter  // what the loop sleeps on; its bell is rung by senders

	// Owned by the loop: touched only by Run's goroutine (and by calls it runs).
	core        *policy.Core
	slots       map[string]*slot // live subjects by id (lookup only; never iterated for output)
	live        []*slot          // the same slots sorted by subject id: the order readings are taken in
	clocks      clocks           // the tick, the level clock and the halt bound
	levels      levelReader
	drainBuf    []*slot
	seqErr      bool // the last Cover failed (logged once until it works again)
	walls       wallStamps
	stats       shellStats   // totals for metrics (metrics.go)
	manualTicks bool         // tests: no ticker; ticks come as calls
	traceTicks  int          // ticks since the live trace was last flushed
	traceNews   bool         // the trace holds inputs that produced output: flush at the tick
	durable     durableWaits // callers waiting for audit records to become durable (durable.go)

	// Shared, each with its own synchronisation.
	dirty       dirtyList
	subs        subscribers
	sys         sysState
	ctx         context.Context
	started     time.Time            // when this run started (Status.startedAtNs)
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
	// Made here, not in Run, so that calls made before Run can ring it. Run closes it;
	// a daemon that never runs leaves its two files to the garbage collector (os.File).
	wait, err := loopwait.New()
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:     cfg,
		log:     cfg.Log,
		audit:   audit,
		term:    term,
		in:      make(chan policy.Input, inputQueue),
		calls:   make(chan call, callQueue),
		stopped: make(chan struct{}),
		wait:    wait,
		core:    core,
		slots:   make(map[string]*slot),
		walls:   newWallStamps(cfg.RingSize),
		levels:  newLevelReader(cfg.System),
		started: cfg.Now(),
		ctx:     context.Background(),

		tickSeconds: newTickHistogram(),
	}
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

func (d *Daemon) auditAcked(upTo uint64) {
	d.send(policy.Input{Kind: policy.InputAuditAck, Seq: upTo})
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
		d.send(policy.Input{Kind: policy.InputTerminateRefused, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision, Reason: "error: " + truncate(err.Error(), 200)})
	case refusal != "":
		d.send(policy.Input{Kind: policy.InputTerminateRefused, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision, Reason: refusal})
	default:
		d.send(policy.Input{Kind: policy.InputTerminateAck, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision})
	}
}

// ErrUnknownSubject is returned for a subject oomd has no connection for.
var ErrUnknownSubject = errors.New("unknown subject")

// Register adds a subject handed over by execd. Its samples count from the next tick.
// It fails only when the loop has ended.
func (d *Daemon) Register(s *slot) error {
	s.subjectB = []byte(s.subject)
	return d.do(func() {
		if old, ok := d.slots[s.subject]; ok {
			if old.conn != nil {
				go old.conn.Close() // may wait on a frozen peer (docs/capnp-traps.md, trap 2)
			}
			d.dropLive(old)
		}
		d.slots[s.subject] = s
		d.addLive(s)
		d.feed(policy.Input{Kind: policy.InputRegister, Subject: s.subject, Instance: s.instance, Critical: s.critical, Preference: s.preference})
		s.coreSlot = d.core.SlotOf(s.subject)
	})
}

// Exited feeds execd's exit report and forgets that instance's connection (a newer
// instance that already registered keeps its own). decision is the kill decision whose
// terminate request the exit followed, as execd recorded it (0: none). durable is
// closed once the audit records the exit caused (a kill completed, a decision ended
// unsent) are durable, at once if it caused none; an exit that came before execd's
// answer to the terminate request waits for the kill it completes. execd's report is
// answered only then (exitWatcher), so a crash in between leaves it with execd, which
// hands it to the next oomd.
func (d *Daemon) Exited(subject string, instance, decision uint64, reason string) (durable <-chan struct{}, err error) {
	err = d.do(func() {
		if s, ok := d.slots[subject]; ok && s.instance == instance {
			delete(d.slots, subject)
			d.dropLive(s)
			if s.conn != nil {
				go s.conn.Close()
			}
		}
		before := d.core.AuditProduced()
		d.feed(policy.Input{Kind: policy.InputExited, Subject: subject, Instance: instance, Decision: decision, Reason: reason})
		switch {
		case d.core.DecisionOpen(subject, instance):
			durable = d.afterDecision(subject, instance) // killed once execd answers the request
		case d.core.AuditProduced() > before:
			durable = d.afterDurable(d.core.AuditProduced())
		default:
			durable = closedDone
		}
	})
	return durable, err
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
	// persisted is what is put in force, under the number it was persisted with. Only
	// SetPolicy changes the policy, so the version read here is still in force below.
	d.polMu.Lock()
	defer d.polMu.Unlock()
	cur, err := query(d, d.core.PolicyVersion)
	if err != nil {
		return 0, err
	}
	if expectVersion != 0 && cur != expectVersion {
		return 0, fmt.Errorf("%w: version %d is in force, not %d; read it again and retry", ErrPolicyChanged, cur, expectVersion)
	}
	if d.cfg.PolicyStore != nil {
		// Durable first (fsync'ed; the loop goes on meanwhile): a restart comes back with it.
		if err := d.cfg.PolicyStore.Save(p, cur+1); err != nil {
			return 0, fmt.Errorf("policy not changed: %w", err)
		}
	}
	var (
		v       uint64
		stepErr error
	)
	err = d.do(func() {
		if stepErr = d.coreStep(policy.Input{Kind: policy.InputPolicy, Policy: &p}); stepErr != nil {
			return
		}
		v = d.core.PolicyVersion()
		if cerr := d.clocks.configure(d.core.Policy(), d.manualTicks); cerr != nil {
			// In force, but the loop cannot keep time: said loudly, the old clocks go on.
			d.log.Error("policy in force, but its clocks could not be set", zap.Error(cerr))
		}
	})
	if err == nil {
		err = stepErr
	}
	if err != nil {
		return 0, err
	}
	return v, nil
}

// maxWhatIf bounds a what-if's answer (events).
const maxWhatIf = 1024

// WhatIf returns what p would do now, against the live state, without changing anything:
// a copy of the core (policy.Restore of its State) takes p and one tick, and its events
// are returned (at most maxWhatIf), with the version in force. The copy runs on the
// caller's goroutine, not the loop's.
func (d *Daemon) WhatIf(p policy.Policy) ([]policy.Event, uint64, error) {
	if err := p.Validate(); err != nil {
		return nil, 0, err
	}
	var (
		st    policy.State
		v     uint64
		stErr error
	)
	if err := d.do(func() { st, stErr = d.core.State(); v = d.core.PolicyVersion() }); err != nil {
		return nil, 0, err
	}
	if stErr != nil {
		return nil, 0, fmt.Errorf("what-if: %w", stErr)
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
func (d *Daemon) events(since uint64, limit int) (evs []policy.Event, next, missed uint64, err error) {
	err = d.do(func() {
		evs, next, missed = d.core.Events(since, limit)
		d.walls.stamp(evs)
	})
	return evs, next, missed, err
}

// inspect runs f on the loop, for read-only queries of the core and the loop's state.
func (d *Daemon) inspect(f func(c *policy.Core)) error {
	return d.do(func() { f(d.core) })
}

func (d *Daemon) slot(subject string) (*slot, bool) {
	var (
		s  *slot
		ok bool
	)
	if d.do(func() { s, ok = d.slots[subject] }) != nil {
		return nil, false
	}
	return s, ok
}
