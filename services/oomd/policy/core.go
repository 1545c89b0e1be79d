package policy

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"oomd.dev/oomd/gen/bounds"
)

// Bounds of the core itself (the policy's bounds are in policy.go).
const (
	// MaxSubjects bounds the subject table. Register beyond it fails with
	// ErrTooManySubjects, so a runaway spawner cannot grow oomd without limit.
	MaxSubjects = 200_000
	// DefaultRingSize is the event ring's capacity when Config.RingSize is 0.
	DefaultRingSize = 4096
	// MaxRingSize bounds Config.RingSize.
	MaxRingSize = 1 << 20
	// MaxReasonBytes bounds every reason the core emits; longer input reasons are cut.
	MaxReasonBytes = bounds.MaxReasonBytes
)

// Reasons the core writes into events, audit records and terminate requests.
const (
	ReasonCritical  = "critical"
	ReasonHardLimit = "hard limit exceeded"
	// ReasonVictim starts the reason of a victim decision (victims.go); the terminate
	// request carries it alone.
	ReasonVictim = "pressure victim"
)

var (
	// ErrBadInput is wrapped by every error Step returns: the input was malformed and
	// the core did not change.
	ErrBadInput = errors.New("bad input")
	// ErrTooManySubjects is wrapped when a Register would exceed MaxSubjects.
	ErrTooManySubjects = errors.New("too many subjects")
)

// Config configures a Core.
type Config struct {
	// Policy in force at start; it must pass Policy.Validate. Its version is 1.
	Policy Policy
	// RingSize is the event ring's capacity: 0 means DefaultRingSize, else
	// 1..MaxRingSize.
	RingSize int
	// AuditSeqBase is the last WriterSeq already in the journal under this writer
	// (logd's Journal.open returns it as lastWriterSeq). The first record the core
	// produces is AuditSeqBase+1, so a restarted oomd continues its gap-free sequence
	// instead of writing records logd drops as duplicates. 0 starts at 1.
	AuditSeqBase uint64
	// PolicyVersion is Policy's version (a restarted oomd continues the persisted one);
	// 0 means 1.
	PolicyVersion uint64
	// EventSeqBase is the highest event seq an earlier oomd run may have used (the shell
	// keeps a high-water mark on disk, reserved in batches). The first event of this core
	// is EventSeqBase+1, so seqs never go backwards across a restart; a reader's since
	// below it is told the earlier run's events are gone (Events' missed). 0 starts at 1.
	EventSeqBase uint64
	// DecisionBase is the highest kill decision id an earlier oomd run used, as its
	// durable audit records show. New decisions are numbered above it (and above every
	// Durable id), so ids stay unique across restarts. 0 starts at 1.
	DecisionBase uint64
	// Durable lists kill decisions of earlier runs whose killDecided record is durable
	// and which had not ended (no killed, killRefused or killDenied for them). The core
	// takes each over without a new audit record: when its (subject, instance)
	// registers, that instance has had its one decision and is not decided again, and the
	// decision counts as acknowledged, so its terminate request goes out when the budget
	// allows. One whose instance never registers stays inert (it ended while oomd was
	// down). At most MaxSubjects, ids unique and non-zero, subjects valid.
	Durable []DurableDecision
}

// DurableDecision is an earlier run's kill decision, read back from its durable
// killDecided record (see Config.Durable).
type DurableDecision struct {
	ID       uint64
	Subject  string
	Instance uint64
	Bytes    uint64 // usage at the decision
	Limit    uint64 // the limit crossed
}

// phase of a kill decision.
type phase uint8

const (
	phaseAudit     phase = iota // audit record produced, not yet acknowledged
	phaseReady                  // acknowledged, waiting for the kill budget
	phaseRequested              // terminate request sent
	phaseAdopted                // an earlier run's durable decision (Config.Durable) whose instance has not registered yet
)

// decision is one kill decision from killDecided to its end (killed, killRefused,
// killDenied at release, or cancelled because the subject exited first). It is kept
// apart from the subject slot because its subject instance can be gone (exited, or
// replaced by a restart) while execd's answer is still outstanding.
type decision struct {
	id         uint64
	subject    string
	instance   uint64
	bytes      uint64 // usage at the decision
	limit      uint64 // the hard limit crossed
	auditSeq   uint64 // WriterSeq of its killDecided record
	phase      phase
	victim     bool   // picked under system pressure (victims.go), not for its hard limit
	throttled  bool   // killThrottled was emitted
	termAcked  bool   // execd acknowledged the terminate request
	exited     bool   // execd reported the instance's exit
	exitReason string // the reason execd gave for that exit
}

// Core is the pure oomd policy state machine. It performs no I/O, reads no clock,
// uses no randomness and starts no goroutine; see the package doc for the loop that
// drives it. A Core is not safe for concurrent use: the shell serialises Step, Tick,
// Ready and Advance on one goroutine.
type Core struct {
	pol        Policy
	polVersion uint64
	critical   map[string]bool         // EffectiveCritical of pol, lookup only
	overrides  map[string]SubjectLimit // pol.Overrides by subject, lookup only
	prefs      map[string]Preference   // pol.Victims lists by subject, lookup only

	tick      uint64
	reevalAll bool // a policy change: evaluate every subject at the next tick

	subjects table
	scratch  []uint32

	decisions    []decision // sorted by id (ids only grow, so append keeps order)
	lastDecision uint64
	auditSeq     uint64   // last WriterSeq produced
	auditAcked   uint64   // highest WriterSeq acknowledged durable
	issued       []uint64 // ticks of terminate requests still inside the kill window

	ring     ring
	counters Counters

	sys system  // pressure level and halt token (system.go)
	vic victims // victim selection under pressure (victims.go)

	// Pending output. Ready hands out the first n of each; Advance drops exactly
	// those, so output produced between Ready and Advance is never lost.
	audit                     []AuditRecord
	terminate                 []TerminateRequest
	haltTimer                 []HaltTimer
	halt                      []HaltRequest
	reboot                    []RebootOutcome
	events                    []Event
	handedA, handedT, handedE int
	handedH, handedR, handedX int
}

// New returns a core enforcing cfg.Policy, at tick 0, with no subjects.
func New(cfg Config) (*Core, error) {
	if err := cfg.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("new policy core: %w", err)
	}
	size := cfg.RingSize
	if size == 0 {
		size = DefaultRingSize
	}
	if size < 1 || size > MaxRingSize {
		return nil, fmt.Errorf("new policy core: ring size %d: must be 0 (default %d) or in 1..%d", cfg.RingSize, DefaultRingSize, MaxRingSize)
	}
	c := &Core{
		subjects:   newTable(),
		ring:       newRing(size, cfg.EventSeqBase),
		auditSeq:   cfg.AuditSeqBase,
		auditAcked: cfg.AuditSeqBase,
	}
	c.setPolicy(cfg.Policy)
	c.polVersion = max(cfg.PolicyVersion, 1)
	if err := c.adopt(cfg.DecisionBase, cfg.Durable); err != nil {
		return nil, fmt.Errorf("new policy core: %w", err)
	}
	return c, nil
}

// adopt takes over the durable decisions of earlier runs (Config.Durable) as
// acknowledged decisions, in id order.
func (c *Core) adopt(base uint64, durable []DurableDecision) error {
	if len(durable) > MaxSubjects {
		return fmt.Errorf("%d durable decisions, at most %d", len(durable), MaxSubjects)
	}
	ds := slices.Clone(durable)
	slices.SortFunc(ds, func(a, b DurableDecision) int { return cmp.Compare(a.ID, b.ID) })
	c.lastDecision = base
	for i, d := range ds {
		if d.ID == 0 || i > 0 && ds[i-1].ID == d.ID {
			return fmt.Errorf("durable decision id %d: ids must be non-zero and unique", d.ID)
		}
		if err := ValidateSubjectID(d.Subject); err != nil {
			return fmt.Errorf("durable decision %d: subject %q: %w", d.ID, d.Subject, err)
		}
		c.decisions = append(c.decisions, decision{id: d.ID, subject: d.Subject, instance: d.Instance,
			bytes: d.Bytes, limit: d.Limit, phase: phaseAdopted})
		c.lastDecision = max(c.lastDecision, d.ID)
	}
	return nil
}

func badInput(in *Input, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrBadInput, in.Kind, fmt.Sprintf(format, args...))
}

// Step applies one input. It returns an error (wrapping ErrBadInput) only for a
// malformed input — unknown kind, invalid policy, malformed subject id, an
// acknowledgement of something never produced, or a Register beyond MaxSubjects — and
// then the core is unchanged. Inputs that are well-formed but stale (a sample from an
// instance that was replaced, an exit of an unknown subject) are ignored, not errors:
// they happen in normal operation when messages race.
func (c *Core) Step(in Input) error {
	switch in.Kind {
	case InputSample:
		return c.sample(&in)
	case InputTick:
		c.doTick()
		return nil
	case InputPolicy:
		return c.stepPolicy(&in)
	case InputRegister:
		return c.register(&in)
	case InputAuditAck:
		return c.auditAck(&in)
	case InputAuditSpilled:
		return c.auditSpilled(&in)
	case InputTerminateAck, InputTerminateRefused:
		return c.terminateAnswer(&in)
	case InputExited:
		return c.exited(&in)
	case InputMemAvailable:
		c.memAvailable(in.Bytes)
		return nil
	case InputPressure:
		if in.Pressure > MaxPSI {
			return badInput(&in, "pressure %d: want 0..%d (hundredths of a percent)", in.Pressure, MaxPSI)
		}
		c.pressure(in.Pressure)
		return nil
	case InputRebootRequest:
		return c.rebootRequest(&in)
	case InputTeardownDone:
		return c.teardownDone(&in)
	case InputHaltTimeout:
		return c.haltTimeout(&in)
	case InputKernel:
		return c.kernelReading(&in)
	case InputMemstatInvalid:
		return c.memstatInvalid(&in)
	}
	return fmt.Errorf("%w: unknown input kind %d", ErrBadInput, in.Kind)
}

// Tick advances time by one tick; it is Step(Input{Kind: InputTick}).
func (c *Core) Tick() { c.doTick() }

// HasReady reports whether Ready has anything the shell has not been handed yet.
func (c *Core) HasReady() bool {
	return len(c.audit) > c.handedA || len(c.terminate) > c.handedT || len(c.events) > c.handedE ||
		len(c.halt) > c.handedH || len(c.reboot) > c.handedR || len(c.haltTimer) > c.handedX
}

// Ready returns everything produced since the last Advance. The shell must act on it
// in the order documented on Ready and then call Advance. Calling Ready again before
// Advance returns the same items plus any produced since.
func (c *Core) Ready() Ready {
	c.handedA, c.handedT, c.handedE = len(c.audit), len(c.terminate), len(c.events)
	c.handedH, c.handedR, c.handedX = len(c.halt), len(c.reboot), len(c.haltTimer)
	return Ready{Audit: c.audit, Terminate: c.terminate, HaltTimer: c.haltTimer, Halt: c.halt, Reboot: c.reboot, Events: c.events}
}

// Advance acknowledges the last Ready: exactly the items it returned are dropped.
// Items produced after that Ready (for example by a Step(InputAuditAck) made while
// handling it) stay pending for the next Ready.
func (c *Core) Advance() {
	c.audit = dropFront(c.audit, c.handedA)
	c.terminate = dropFront(c.terminate, c.handedT)
	c.events = dropFront(c.events, c.handedE)
	c.halt = dropFront(c.halt, c.handedH)
	c.reboot = dropFront(c.reboot, c.handedR)
	c.haltTimer = dropFront(c.haltTimer, c.handedX)
	c.handedA, c.handedT, c.handedE = 0, 0, 0
	c.handedH, c.handedR, c.handedX = 0, 0, 0
}

// dropFront removes the first n items, reusing the backing array so a steady loop
// does not allocate.
func dropFront[T any](s []T, n int) []T {
	rest := copy(s, s[n:])
	clear(s[rest:])
	return s[:rest]
}

// Policy returns a copy of the policy in force.
func (c *Core) Policy() Policy { return clonePolicy(c.pol) }

// PolicyVersion is Config.PolicyVersion (1 by default) for Config.Policy and grows by
// one per accepted InputPolicy.
func (c *Core) PolicyVersion() uint64 { return c.polVersion }

// TickCount is the number of ticks so far.
func (c *Core) TickCount() uint64 { return c.tick }

// LastSeq is the seq of the newest event (Config.EventSeqBase if none yet).
func (c *Core) LastSeq() uint64 { return c.ring.lastSeq }

// EventSeqBase is Config.EventSeqBase: events of this core have seqs above it.
func (c *Core) EventSeqBase() uint64 { return c.ring.base }

// Events returns up to limit events with seq > sinceSeq, oldest first, from the
// bounded ring, in a slice the caller owns. nextSeq is the sinceSeq for the next
// call. missed counts requested events the ring already overwrote (they are skipped).
func (c *Core) Events(sinceSeq uint64, limit int) (evs []Event, nextSeq uint64, missed uint64) {
	return c.ring.read(sinceSeq, limit)
}

// Subjects returns up to limit subjects sorted by id; truncated says more exist.
func (c *Core) Subjects(limit int) (list []SubjectStatus, truncated bool) {
	n := min(max(limit, 0), c.subjects.len())
	list = make([]SubjectStatus, 0, n)
	for _, i := range c.subjects.order[:n] {
		list = append(list, c.status(&c.subjects.slots[i]))
	}
	return list, n < c.subjects.len()
}

// Subject returns one subject's status. Exited subjects are gone.
func (c *Core) Subject(id string) (SubjectStatus, bool) {
	s, _, ok := c.subjects.lookup(id)
	if !ok {
		return SubjectStatus{}, false
	}
	return c.status(s), true
}

// SlotOf returns the handle of a registered subject for Input.Slot (0 if id is not
// registered). It stays valid until the subject's instance exits; a stale handle is
// detected and ignored.
func (c *Core) SlotOf(id string) uint32 {
	if i, ok := c.subjects.index[id]; ok {
		return i + 1
	}
	return 0
}

// DecisionOpen reports whether a kill decision about that instance is still open: it
// was made (or adopted from an earlier run) and not yet ended by killed, killRefused,
// killDenied or an unsent end. An exit leaves a decision open while execd's answer to
// its terminate request is still to come.
func (c *Core) DecisionOpen(subject string, instance uint64) bool {
	_, ok := c.decisionOf(subject, instance)
	return ok
}

// Counters returns the totals since New.
func (c *Core) Counters() Counters { return c.counters }

func (c *Core) status(s *subject) SubjectStatus {
	return SubjectStatus{
		Subject:   s.id,
		Instance:  s.instance,
		Bytes:     s.bytes,
		SoftBytes: s.soft,
		HardBytes: s.hard,
		State:     s.state(),
		Critical:  c.isCritical(s.id, s.critical),
		Rejected:  s.rejected,

		Kernel:      s.kernel,
		Cooperative: s.coop,
		HasKernel:   s.hasKernel,
		Published:   s.published,
		Signal:      s.signal,
		Preference:  c.preferenceOf(s),
	}
}

func (c *Core) isCritical(id string, registered bool) bool {
	return registered || c.critical[id]
}

// ---------------------------------------------------------------------------------
// Inputs

// sample is the hot path: one map lookup (none with a valid Slot), no allocation. Evaluation waits for the
// tick so a flood of samples costs O(1) each and cannot emit more than one round of
// threshold events per tick.
func (c *Core) sample(in *Input) error {
	i, ok := c.subjects.find(in.Slot, in.Subject)
	if !ok {
		if err := ValidateSubjectID(in.Subject); err != nil {
			return badInput(in, "subject %q: want %v", in.Subject, err)
		}
		c.counters.Dropped += max(in.Count, 1)
		return nil
	}
	n := max(in.Count, 1)
	h := &c.subjects.hot[i]
	if h.instance != in.Instance {
		c.counters.Dropped += n
		return nil
	}
	if in.Claimed != in.Subject {
		c.rejectSample(&c.subjects.slots[i], in.Claimed, n)
		return nil
	}
	h.pending = in.Bytes
	h.hasPending = true
	c.subjects.markDirty(h, i)
	c.counters.Accepted += n
	return nil
}

// kernelReading takes the kernel's count for a subject. The shell steps one per subject
// per tick; an unchanged reading costs a lookup and nothing else, unless the subject is
// counting an under-report gap.
func (c *Core) kernelReading(in *Input) error {
	i, ok := c.subjects.find(in.Slot, in.Subject)
	if !ok {
		if err := ValidateSubjectID(in.Subject); err != nil {
			return badInput(in, "subject %q: want %v", in.Subject, err)
		}
		return nil
	}
	h := &c.subjects.hot[i]
	if h.instance != in.Instance {
		return nil
	}
	if in.Reason != "" {
		s := &c.subjects.slots[i]
		if s.kernelFailed {
			return nil // once per episode
		}
		s.kernelErr = clip(in.Reason)
		h.kernelNew = true
		c.subjects.markDirty(h, i)
		return nil
	}
	if c.kernelSame(i, in.Bytes) {
		return nil
	}
	h.kernel, h.hasKernel, h.kernelNew = in.Bytes, true, true
	c.subjects.markDirty(h, i)
	return nil
}

// kernelSame reports whether a kernel reading of bytes for subject i changes nothing: the
// last one had the same value, no tick is counting readings for it (an under-report gap
// counts ticks until the readings close it), and it is not recovering from a failed read.
func (c *Core) kernelSame(i uint32, bytes uint64) bool {
	h := &c.subjects.hot[i]
	return h.hasKernel && h.kernel == bytes && !h.watch && !c.subjects.slots[i].kernelFailed
}

// KernelUnchanged reports whether stepping in, a kernel reading, would change nothing at
// all: no state, no output. The shell does not step (nor record) such a reading, so an
// idle tick steps no kernel reading. A replay of its trace is the same as of one that
// held them, since the core ignores them; under another policy they may matter (another
// under-report margin), and tracelog.WhatIf puts them back. An error reading, a reading
// of another instance or of an unknown subject is never "unchanged": it is stepped.
func (c *Core) KernelUnchanged(in *Input) bool {
	if in.Kind != InputKernel || in.Reason != "" {
		return false
	}
	i, ok := c.subjects.find(in.Slot, in.Subject)
	return ok && c.subjects.hot[i].instance == in.Instance && c.kernelSame(i, in.Bytes)
}

// memstatInvalid reports a page the shell could not read, once per episode.
func (c *Core) memstatInvalid(in *Input) error {
	s, _, ok := c.subjects.lookup(in.Subject)
	if !ok || s.instance != in.Instance || s.invalid {
		if err := ValidateSubjectID(in.Subject); err != nil {
			return badInput(in, "subject %q: want %v", in.Subject, err)
		}
		return nil
	}
	s.invalid = true
	c.emit(Event{Subject: s.id, Kind: EventMemstatInvalid, Reason: clip(in.Reason)})
	return nil
}

// SoftLimit returns the soft limit of a registered subject (handle as from SlotOf;
// looked up by id when the handle is stale), for the shell's reading threshold.
func (c *Core) SoftLimit(handle uint32, id string) uint64 {
	if i, ok := c.subjects.find(handle, id); ok {
		return c.subjects.slots[i].soft
	}
	return 0
}

// rejectSample drops a sample that claims to be someone else. Every rejection is
// counted, but at most one memstatRejected event per subject per tick is emitted: a
// spoofing flood must not be able to push the kill history out of the ring.
func (c *Core) rejectSample(s *subject, claimed string, n uint64) {
	s.rejected += n
	c.counters.Rejected += n
	if s.rejectTick == c.tick+1 {
		return
	}
	s.rejectTick = c.tick + 1
	// Audited as well as evented (invariant 2), at the same bounded rate: the record
	// says how many attempts this input stood for.
	reason := "claimed=" + printableID(claimed)
	c.appendAudit(AuditRecord{Kind: EventMemstatRejected, Subject: s.id, Instance: s.instance,
		Reason: reason + " attempts=" + strconv.FormatUint(n, 10)})
	c.emit(Event{Subject: s.id, Kind: EventMemstatRejected, Bytes: 0, Reason: reason})
}

// printableID renders an untrusted subject id for a reason string: a valid id as is,
// anything else quoted (and cut), so it cannot inject text into logs or markers.
func printableID(id string) string {
	if ValidateSubjectID(id) == nil {
		return id
	}
	if len(id) > MaxSubjectIDBytes {
		id = id[:MaxSubjectIDBytes]
	}
	return strconv.QuoteToASCII(id)
}

func (c *Core) stepPolicy(in *Input) error {
	if in.Policy == nil {
		return badInput(in, "no policy")
	}
	if err := in.Policy.Validate(); err != nil {
		return badInput(in, "%v", err)
	}
	c.setPolicy(*in.Policy)
	c.polVersion++
	c.reevalAll = true
	c.emit(Event{Kind: EventPolicyChanged, Reason: "version=" + strconv.FormatUint(c.polVersion, 10)})
	if !c.pol.Levels.Enabled() {
		c.sys.availLevel, c.sys.psiLevel = LevelNormal, LevelNormal
		c.setLevel(LevelNormal, 0) // monitoring off: nothing is under pressure any more
	}
	return nil
}

func (c *Core) setPolicy(p Policy) {
	c.pol = clonePolicy(p)
	c.critical = make(map[string]bool)
	for _, id := range p.EffectiveCritical() {
		c.critical[id] = true
	}
	c.overrides = make(map[string]SubjectLimit, len(p.Overrides))
	for _, o := range p.Overrides {
		c.overrides[o.Subject] = o
	}
	c.prefs = make(map[string]Preference, len(p.Victims.Prefer)+len(p.Victims.Avoid)+len(p.Victims.Never))
	for pref, ids := range [...][]string{PreferencePrefer: p.Victims.Prefer, PreferenceAvoid: p.Victims.Avoid, PreferenceNever: p.Victims.Never} {
		for _, id := range ids {
			c.prefs[id] = Preference(pref)
		}
	}
	// Limits show in status at once; thresholds are re-evaluated at the next tick.
	for _, i := range c.subjects.order {
		s := &c.subjects.slots[i]
		s.soft, s.hard = c.limits(s.id)
		s.signal = c.signalOf(s.id)
		s.dryRun = c.dryRunOf(s.id)
	}
}

func clonePolicy(p Policy) Policy {
	p.Critical = slices.Clone(p.Critical)
	p.Overrides = slices.Clone(p.Overrides)
	p.Victims.Prefer = slices.Clone(p.Victims.Prefer)
	p.Victims.Avoid = slices.Clone(p.Victims.Avoid)
	p.Victims.Never = slices.Clone(p.Victims.Never)
	return p
}

func (c *Core) signalOf(id string) Signal {
	if o, ok := c.overrides[id]; ok && o.Signal != nil {
		return *o.Signal
	}
	return c.pol.Signal
}

func (c *Core) limits(id string) (soft, hard uint64) {
	if o, ok := c.overrides[id]; ok {
		return o.SoftBytes, o.HardBytes
	}
	return c.pol.SoftBytes, c.pol.HardBytes
}

// dryRunOf is the policy's dry run for subject id (docs: Policy.DryRun).
func (c *Core) dryRunOf(id string) bool {
	if o, ok := c.overrides[id]; ok && o.DryRun != nil {
		return *o.DryRun
	}
	return c.pol.DryRun
}

func (c *Core) register(in *Input) error {
	if err := ValidateSubjectID(in.Subject); err != nil {
		return badInput(in, "subject %q: want %v", in.Subject, err)
	}
	if in.Preference > PreferenceNever {
		return badInput(in, "preference %d: want none, prefer, avoid or never", in.Preference)
	}
	s, i, ok := c.subjects.lookup(in.Subject)
	switch {
	case ok && s.instance == in.Instance:
		return nil // execd repeated itself; the state stands
	case ok:
		// A restart: the old instance is gone, so it gets no terminate, and the new one
		// starts fresh with its own one-decision allowance.
		c.cancelDecisionsOf(in.Subject, s.instance, "instance "+strconv.FormatUint(in.Instance, 10)+" replaced it")
		c.subjects.remove(i)
	case c.subjects.len() >= MaxSubjects:
		return fmt.Errorf("%w: %w: %s: %d subjects registered (max %d)", ErrBadInput, ErrTooManySubjects, in.Kind, c.subjects.len(), MaxSubjects)
	}
	s, i = c.subjects.add(in.Subject)
	c.subjects.setInstance(i, in.Instance)
	s.critical = in.Critical
	s.pref = in.Preference
	s.soft, s.hard = c.limits(in.Subject)
	s.signal = c.signalOf(in.Subject)
	s.dryRun = c.dryRunOf(in.Subject)
	if k, ok := c.decisionOf(s.id, s.instance); ok {
		// A decision an earlier run made durably for this very instance (Config.Durable):
		// the instance has had its one decision.
		// It is released only now: an instance that never comes back (it ended while
		// oomd was down) gets no terminate request, and so no spurious killRefused.
		d := &c.decisions[k]
		if d.phase == phaseAdopted {
			d.phase = phaseReady
		}
		s.decided, s.decision, s.requested = true, d.id, d.phase == phaseRequested
	}
	reason := ""
	if c.isCritical(s.id, s.critical) {
		reason = ReasonCritical
	}
	c.emit(Event{Subject: s.id, Kind: EventSubjectRegistered, Reason: reason})
	return nil
}

func (c *Core) auditAck(in *Input) error {
	if in.Seq > c.auditSeq {
		// Acknowledging a record never produced means the shell's journal is not ours
		// (see Config.AuditSeqBase). Refusing keeps kills blocked instead of trusting it.
		return badInput(in, "seq %d beyond the last audit record %d", in.Seq, c.auditSeq)
	}
	if in.Seq <= c.auditAcked {
		return nil
	}
	c.auditAcked = in.Seq
	c.releaseHalt()
	for k := range c.decisions {
		d := &c.decisions[k]
		if d.phase == phaseAudit && d.auditSeq <= c.auditAcked {
			d.phase = phaseReady
		}
	}
	c.release()
	return nil
}

// auditSpilled reports records the shell made durable in its spill file, then
// acknowledges them. An input covering nothing new emits nothing.
func (c *Core) auditSpilled(in *Input) error {
	if in.Seq > c.auditSeq {
		return badInput(in, "seq %d beyond the last audit record %d", in.Seq, c.auditSeq)
	}
	if in.Seq <= c.auditAcked {
		return nil
	}
	reason := "records=" + strconv.FormatUint(c.auditAcked+1, 10) + ".." + strconv.FormatUint(in.Seq, 10)
	if in.Reason != "" {
		reason += " cause=" + in.Reason
	}
	c.emit(Event{Kind: EventAuditSpilled, Reason: clip(reason)})
	return c.auditAck(&Input{Kind: InputAuditAck, Seq: in.Seq})
}

func (c *Core) findDecision(id uint64) (int, bool) {
	return slices.BinarySearchFunc(c.decisions, id, func(d decision, id uint64) int {
		switch {
		case d.id < id:
			return -1
		case d.id > id:
			return 1
		}
		return 0
	})
}

func (c *Core) terminateAnswer(in *Input) error {
	if in.Decision == 0 || in.Decision > c.lastDecision {
		return badInput(in, "decision %d was never made (last %d)", in.Decision, c.lastDecision)
	}
	k, ok := c.findDecision(in.Decision)
	if !ok {
		return nil // already finished or cancelled; a late or repeated answer
	}
	d := &c.decisions[k]
	if d.phase != phaseRequested {
		return badInput(in, "decision %d has no terminate request outstanding", in.Decision)
	}
	if in.Kind == InputTerminateRefused {
		if d.termAcked {
			return badInput(in, "decision %d was already acknowledged", in.Decision)
		}
		c.appendAudit(AuditRecord{Kind: EventKillRefused, Subject: d.subject, Instance: d.instance, Bytes: d.bytes, Limit: d.limit, Decision: d.id, Reason: clip(in.Reason)})
		c.emit(Event{Subject: d.subject, Kind: EventKillRefused, Bytes: d.bytes, Limit: d.limit, Decision: d.id, Reason: clip(in.Reason)})
		c.endDecision(k)
		return nil
	}
	if d.termAcked {
		return nil // a repeated acknowledgement
	}
	d.termAcked = true
	if d.exited {
		c.killed(k, d.exitReason)
	}
	return nil
}

func (c *Core) exited(in *Input) error {
	if err := ValidateSubjectID(in.Subject); err != nil {
		return badInput(in, "subject %q: want %v", in.Subject, err)
	}
	reason := clip(in.Reason)
	s, i, live := c.subjects.lookup(in.Subject)
	live = live && s.instance == in.Instance

	// The decision of that instance, if any, is looked up by (subject, instance), not
	// through the slot: a restart may have replaced the slot while execd was still
	// answering the terminate request.
	k, hasDecision := c.decisionOf(in.Subject, in.Instance)
	if !live && !hasDecision {
		return nil // an exit we do not track (never registered, or already gone)
	}
	c.emit(Event{Subject: in.Subject, Kind: EventSubjectExited, Reason: reason})
	if hasDecision {
		d := &c.decisions[k]
		switch {
		case d.phase == phaseAdopted && in.Decision == d.id:
			// An earlier run requested this very termination and the instance exited while
			// oomd was down; execd kept the report (ExitReport.decision). The kill is
			// complete now, once: its killed record ends the decision durably.
			c.killed(k, reason)
		case d.phase != phaseRequested:
			// Not yet released: nothing was sent, and nothing ever will be.
			c.cancelDecision(k, "exited before its terminate request: "+reason)
		case d.termAcked:
			c.killed(k, reason)
		default:
			d.exited = true
			d.exitReason = reason
		}
	}
	if live {
		c.subjects.remove(i)
	}
	return nil
}

func (c *Core) decisionOf(subject string, instance uint64) (int, bool) {
	for k := range c.decisions {
		if d := &c.decisions[k]; d.subject == subject && d.instance == instance {
			return k, true
		}
	}
	return 0, false
}

func (c *Core) cancelDecisionsOf(subject string, instance uint64, why string) {
	if k, ok := c.decisionOf(subject, instance); ok && c.decisions[k].phase != phaseRequested {
		c.cancelDecision(k, why)
	}
}

// Every end of a kill decision is audited, with its id, so a restarted oomd that reads
// the journal back (Config.Durable) knows which of an earlier run's decisions are still
// open: killed, killRefused, killDenied, or this record of a decision that ended unsent.
// These records gate nothing; only killDecided does.

// cancelDecision ends decision k before any terminate request went out.
func (c *Core) cancelDecision(k int, why string) {
	d := &c.decisions[k]
	c.appendAudit(AuditRecord{Kind: EventSubjectExited, Subject: d.subject, Instance: d.instance, Decision: d.id,
		Reason: clip("decision ended unsent: " + why)})
	c.endDecision(k)
}

// killed completes decision k: terminate acknowledged and exit observed.
func (c *Core) killed(k int, reason string) {
	d := &c.decisions[k]
	c.counters.Kills++
	c.appendAudit(AuditRecord{Kind: EventKilled, Subject: d.subject, Instance: d.instance, Bytes: d.bytes, Limit: d.limit, Decision: d.id, Reason: reason})
	c.emit(Event{Subject: d.subject, Kind: EventKilled, Bytes: d.bytes, Limit: d.limit, Decision: d.id, Reason: reason})
	c.endDecision(k)
}

// endDecision forgets decision k and detaches it from its subject if that instance is
// still registered.
func (c *Core) endDecision(k int) {
	d := &c.decisions[k]
	if s, _, ok := c.subjects.lookup(d.subject); ok && s.instance == d.instance && s.decision == d.id {
		s.decision = 0
		s.requested = false
	}
	if d.id == c.vic.inflight {
		c.victimEnded()
	}
	c.decisions = slices.Delete(c.decisions, k, k+1)
}

// clip bounds a reason taken from an input, cutting on a rune boundary.
func clip(s string) string {
	if len(s) <= MaxReasonBytes {
		return s
	}
	return strings.ToValidUTF8(s[:MaxReasonBytes], "")
}

// ---------------------------------------------------------------------------------
// Tick

func (c *Core) doTick() {
	c.tick++
	all := c.reevalAll
	c.reevalAll = false
	c.scratch = c.subjects.takeDirty(all, c.scratch)
	for _, i := range c.scratch {
		s, h := &c.subjects.slots[i], &c.subjects.hot[i]
		fresh := h.hasPending || h.kernelNew
		if h.hasPending {
			s.coop, s.published, s.invalid = h.pending, true, false
			h.hasPending = false
		}
		if h.kernelNew {
			h.kernelNew = false
			c.kernelUpdate(s, h)
		}
		if fresh && s.hasKernel {
			c.underReport(s, h)
		}
		s.bytes = s.enforced()
		c.evaluate(s)
	}
	c.pickVictim()
	c.release()
	c.haltDeadline()
}

// enforced is the reading the subject's limits apply to (Policy.Signal).
func (s *subject) enforced() uint64 {
	switch {
	case s.signal == SignalCooperative || !s.hasKernel:
		return s.coop
	case s.signal == SignalKernel:
		return s.kernel
	}
	return max(s.coop, s.kernel)
}

// source names the reading that gave the enforced value, for reasons ("" when the
// subject has no kernel reading, so v1 traces read as before).
func (s *subject) source() string {
	switch {
	case !s.hasKernel || s.signal == SignalCooperative:
		return ""
	case s.signal == SignalKernel || s.kernel >= s.coop || !s.published:
		return "kernel"
	}
	return "cooperative"
}

// kernelUpdate applies a kernel reading or failure: the failure is reported once per
// episode, and the last good reading stays in force.
func (c *Core) kernelUpdate(s *subject, h *hot) {
	if s.kernelErr != "" {
		if !s.kernelFailed {
			s.kernelFailed = true
			c.emit(Event{Subject: s.id, Kind: EventKernelReadFailed, Reason: s.kernelErr})
		}
		s.kernelErr = ""
		return
	}
	s.kernelFailed = false
	s.kernel, s.hasKernel = h.kernel, true
}

// underReport counts the ticks in which the kernel's count exceeds the published value
// by more than the margin, and reports an episode once when the count is reached. The
// episode ends when the gap closes (either reading may close it).
func (c *Core) underReport(s *subject, h *hot) {
	margin := c.pol.UnderReport.Margin()
	if !s.published || s.kernel <= s.coop || s.kernel-s.coop <= margin {
		s.underTicks, s.underReported, h.watch = 0, false, false
		return
	}
	if s.underReported {
		return
	}
	s.underTicks++
	h.watch = true
	if s.underTicks < c.pol.UnderReport.TickCount() {
		return
	}
	s.underReported, h.watch = true, false
	reason := "kernel=" + strconv.FormatUint(s.kernel, 10) + " published=" + strconv.FormatUint(s.coop, 10) +
		" ticks=" + strconv.FormatUint(s.underTicks, 10)
	c.appendAudit(AuditRecord{Kind: EventMemstatUnderReported, Subject: s.id, Instance: s.instance, Bytes: s.kernel, Limit: s.coop, Reason: reason})
	c.emit(Event{Subject: s.id, Kind: EventMemstatUnderReported, Bytes: s.kernel, Limit: s.coop, Reason: reason})
}

// evaluate applies the subject's latest sample to its thresholds. Soft is edge
// triggered both ways; hard gives a non-critical instance one kill decision in its
// lifetime and a critical one a denial per crossing.
func (c *Core) evaluate(s *subject) {
	u := s.bytes
	switch {
	case u > s.soft && !s.aboveSoft:
		s.aboveSoft = true
		c.emit(Event{Subject: s.id, Kind: EventSoftExceeded, Bytes: u, Limit: s.soft})
	case u <= s.soft && s.aboveSoft:
		s.aboveSoft = false
		c.emit(Event{Subject: s.id, Kind: EventSoftCleared, Bytes: u, Limit: s.soft})
	}
	switch {
	case u <= s.hard:
		s.denied = false // re-arm: the next crossing is denied (and audited) again
	case c.isCritical(s.id, s.critical):
		// A terminate already sent cannot be taken back (execd refuses critical
		// subjects itself); otherwise deny once per crossing, and a decision still
		// waiting for audit or budget (the policy made the subject critical since) ends
		// with this same denial.
		if !s.denied && !s.requested {
			s.denied = true
			c.deny(s.id, s.instance, u, s.hard, s.decision)
			if k, ok := c.findDecision(s.decision); s.decision != 0 && ok {
				c.endDecision(k)
			}
		}
	case s.dryRun && s.decision == 0:
		// Reported once per crossing (re-armed below hard, like a denial); nothing is
		// decided, so the instance keeps its one decision for when the dry run ends.
		if !s.denied {
			s.denied = true
			c.wouldKill(s.id, s.instance, u, s.hard, 0, "dry run: "+c.killReason(s))
		}
	case !s.decided:
		s.decided = true
		c.decide(s, u)
	}
}

// wouldKill reports (and audits) a kill a dry run holds back; decisionID is the decision
// it ends, 0 if none was made.
func (c *Core) wouldKill(subject string, instance, bytes, limit, decisionID uint64, reason string) {
	reason = clip(reason)
	c.appendAudit(AuditRecord{Kind: EventWouldKill, Subject: subject, Instance: instance, Bytes: bytes, Limit: limit, Decision: decisionID, Reason: reason})
	c.emit(Event{Subject: subject, Kind: EventWouldKill, Bytes: bytes, Limit: limit, Decision: decisionID, Reason: reason})
}

// killReason is the reason a hard-limit decision about s carries.
func (c *Core) killReason(s *subject) string {
	if src := s.source(); src != "" {
		return ReasonHardLimit + " (" + src + ")"
	}
	return ReasonHardLimit
}

func (c *Core) deny(subject string, instance, bytes, limit, decisionID uint64) {
	c.counters.Denied++
	c.appendAudit(AuditRecord{Kind: EventKillDenied, Subject: subject, Instance: instance, Bytes: bytes, Limit: limit, Decision: decisionID, Reason: ReasonCritical})
	c.emit(Event{Subject: subject, Kind: EventKillDenied, Bytes: bytes, Limit: limit, Decision: decisionID, Reason: ReasonCritical})
}

func (c *Core) decide(s *subject, u uint64) {
	c.lastDecision++
	d := decision{id: c.lastDecision, subject: s.id, instance: s.instance, bytes: u, limit: s.hard}
	reason, src := c.killReason(s), s.source()
	d.auditSeq = c.appendAudit(AuditRecord{Kind: EventKillDecided, Subject: s.id, Instance: s.instance, Bytes: u, Limit: s.hard, Decision: d.id, Reason: reason})
	c.decisions = append(c.decisions, d)
	s.decision = d.id
	evReason := ""
	if src != "" {
		evReason = "signal=" + src
	}
	c.emit(Event{Subject: s.id, Kind: EventKillDecided, Bytes: u, Limit: s.hard, Decision: d.id, Reason: evReason})
}

// release sends terminate requests for acknowledged decisions in decision-id order
// while the kill budget allows, and marks the rest throttled (once each). Criticality
// is checked again here because the policy may have changed since the decision.
func (c *Core) release() {
	c.pruneIssued()
	for k := 0; k < len(c.decisions); k++ {
		d := &c.decisions[k]
		if d.phase != phaseReady {
			continue
		}
		if c.critical[d.subject] {
			if s, _, ok := c.subjects.lookup(d.subject); ok && s.instance == d.instance {
				s.denied = true // this crossing is now denied; do not deny it twice
			}
			c.deny(d.subject, d.instance, d.bytes, d.limit, d.id)
			c.endDecision(k)
			k--
			continue
		}
		if c.dryRunOf(d.subject) {
			// A dry run began after the decision: it ends unsent, said as what it is.
			if s, _, ok := c.subjects.lookup(d.subject); ok && s.instance == d.instance {
				s.denied = true // reported for this crossing
			}
			c.wouldKill(d.subject, d.instance, d.bytes, d.limit, d.id, "dry run began before its terminate request")
			c.endDecision(k)
			k--
			continue
		}
		if uint32(len(c.issued)) >= c.pol.KillBudget {
			if !d.throttled {
				d.throttled = true
				c.counters.Throttled++
				c.emit(Event{Subject: d.subject, Kind: EventKillThrottled, Bytes: d.bytes, Limit: d.limit, Decision: d.id,
					Reason: "budget=" + strconv.FormatUint(uint64(c.pol.KillBudget), 10) + " window=" + strconv.FormatUint(uint64(c.pol.KillWindowTicks), 10)})
			}
			continue
		}
		d.phase = phaseRequested
		c.issued = append(c.issued, c.tick)
		if s, _, ok := c.subjects.lookup(d.subject); ok && s.instance == d.instance {
			s.requested = true
		}
		reason := ReasonHardLimit
		if d.victim {
			reason = ReasonVictim
		}
		c.terminate = append(c.terminate, TerminateRequest{Decision: d.id, Subject: d.subject, Instance: d.instance, Bytes: d.bytes, Limit: d.limit, Reason: reason})
		c.emit(Event{Subject: d.subject, Kind: EventKillRequested, Bytes: d.bytes, Limit: d.limit, Decision: d.id})
	}
}

// pruneIssued forgets terminate requests older than the window: a request at tick t
// counts against the budget through tick t+KillWindowTicks-1.
func (c *Core) pruneIssued() {
	w := uint64(c.pol.KillWindowTicks)
	n := 0
	for n < len(c.issued) && c.issued[n]+w <= c.tick {
		n++
	}
	c.issued = dropFront(c.issued, n)
}

// ---------------------------------------------------------------------------------
// Output

func (c *Core) appendAudit(r AuditRecord) uint64 {
	c.auditSeq++
	r.WriterSeq = c.auditSeq
	r.Tick = c.tick
	c.audit = append(c.audit, r)
	return r.WriterSeq
}

func (c *Core) emit(ev Event) {
	ev.Tick = c.tick
	c.events = append(c.events, c.ring.push(ev))
}
