package policy

import (
	"errors"
	"fmt"
	"slices"
)

// StateVersion changes when State's meaning changes; Restore refuses another version.
const StateVersion = 1

// State is a Core's whole state between steps, as plain data: what a live trace file
// starts with (services/oomd/tracelog), so that a trace can be replayed from the middle
// of a run. Restore(s) continues exactly as the core State was taken from would: the
// same inputs give the same Ready, byte for byte (TestStateRestoreContinuesIdentically).
//
// Left out on purpose: the event ring's content (a restored core's Events starts empty,
// its seqs continue), slot numbering (subjects are restored in id order; slot handles
// are hints the core checks), and pending output (State requires none).
type State struct {
	Version       int              `json:"version"`
	Policy        Policy           `json:"policy"`
	PolicyVersion uint64           `json:"policyVersion"`
	RingSize      int              `json:"ringSize"`
	Tick          uint64           `json:"tick"`
	ReevalAll     bool             `json:"reevalAll,omitempty"`
	Subjects      []SubjectRecord  `json:"subjects,omitempty"`
	Decisions     []DecisionRecord `json:"decisions,omitempty"`
	LastDecision  uint64           `json:"lastDecision"`
	AuditSeq      uint64           `json:"auditSeq"`
	AuditAcked    uint64           `json:"auditAcked"`
	Issued        []uint64         `json:"issued,omitempty"`
	EventBase     uint64           `json:"eventBase"`
	LastEventSeq  uint64           `json:"lastEventSeq"`
	Counters      Counters         `json:"counters"`
	System        SystemRecord     `json:"system"`
	Victims       VictimsRecord    `json:"victims"`
}

// SubjectRecord is one registered subject in a State (the fields of subject and its hot
// slot that are not derived from the policy).
type SubjectRecord struct {
	ID            string     `json:"id"`
	Instance      uint64     `json:"instance"`
	Critical      bool       `json:"critical,omitempty"`
	Pref          Preference `json:"pref,omitempty"`
	Bytes         uint64     `json:"bytes,omitempty"`
	Coop          uint64     `json:"coop,omitempty"`
	Kernel        uint64     `json:"kernel,omitempty"`
	Published     bool       `json:"published,omitempty"`
	HasKernel     bool       `json:"hasKernel,omitempty"`
	UnderTicks    uint64     `json:"underTicks,omitempty"`
	UnderReported bool       `json:"underReported,omitempty"`
	KernelFailed  bool       `json:"kernelFailed,omitempty"`
	KernelErr     string     `json:"kernelErr,omitempty"`
	Invalid       bool       `json:"invalid,omitempty"`
	AboveSoft     bool       `json:"aboveSoft,omitempty"`
	Denied        bool       `json:"denied,omitempty"`
	Decided       bool       `json:"decided,omitempty"`
	Decision      uint64     `json:"decision,omitempty"`
	Requested     bool       `json:"requested,omitempty"`
	WouldKill     uint64     `json:"wouldKill,omitempty"`
	Rejected      uint64     `json:"rejected,omitempty"`
	RejectTick    uint64     `json:"rejectTick,omitempty"`
	// The hot slot: what arrived since the last tick.
	Pending      uint64 `json:"pending,omitempty"`
	HasPending   bool   `json:"hasPending,omitempty"`
	HotKernel    uint64 `json:"hotKernel,omitempty"`
	HotHasKernel bool   `json:"hotHasKernel,omitempty"`
	KernelNew    bool   `json:"kernelNew,omitempty"`
	Watch        bool   `json:"watch,omitempty"`
}

// DecisionRecord is one live kill decision in a State.
type DecisionRecord struct {
	ID         uint64 `json:"id"`
	Subject    string `json:"subject"`
	Instance   uint64 `json:"instance"`
	Bytes      uint64 `json:"bytes"`
	Limit      uint64 `json:"limit"`
	AuditSeq   uint64 `json:"auditSeq,omitempty"`
	Phase      uint8  `json:"phase"`
	Victim     bool   `json:"victim,omitempty"`
	Throttled  bool   `json:"throttled,omitempty"`
	TermAcked  bool   `json:"termAcked,omitempty"`
	Exited     bool   `json:"exited,omitempty"`
	ExitReason string `json:"exitReason,omitempty"`
}

// SystemRecord is the pressure level and the halt token in a State.
type SystemRecord struct {
	Level        Level  `json:"level"`
	Avail        uint64 `json:"avail,omitempty"`
	PSI          uint32 `json:"psi,omitempty"`
	HasPSI       bool   `json:"hasPSI,omitempty"`
	AvailLevel   Level  `json:"availLevel"`
	PSILevel     Level  `json:"psiLevel"`
	Outcomes     uint64 `json:"outcomes,omitempty"`
	HaltClaimed  bool   `json:"haltClaimed,omitempty"`
	HaltReason   string `json:"haltReason,omitempty"`
	HaltTick     uint64 `json:"haltTick,omitempty"`
	HaltDeadline uint64 `json:"haltDeadline,omitempty"`
	HaltAuditSeq uint64 `json:"haltAuditSeq,omitempty"`
	HaltReleased bool   `json:"haltReleased,omitempty"`
	HaltDone     bool   `json:"haltDone,omitempty"`
	HaltTimedOut bool   `json:"haltTimedOut,omitempty"`
}

// VictimsRecord is victim selection's state in a State.
type VictimsRecord struct {
	Inflight  uint64 `json:"inflight,omitempty"`
	EndedAt   uint64 `json:"endedAt,omitempty"`
	Ended     bool   `json:"ended,omitempty"`
	Episode   uint64 `json:"episode,omitempty"`
	InEpisode bool   `json:"inEpisode,omitempty"`
}

// ErrOutputPending: State was asked for while Ready output was not yet advanced.
var ErrOutputPending = errors.New("core state: output pending (call Advance first)")

// State returns the core's state. It fails only when Ready output is pending: take it
// right after Advance.
func (c *Core) State() (State, error) {
	if c.HasReady() || len(c.audit)+len(c.terminate)+len(c.events)+len(c.halt)+len(c.reboot)+len(c.haltTimer) > 0 {
		return State{}, ErrOutputPending
	}
	st := State{
		Version: StateVersion, Policy: clonePolicy(c.pol), PolicyVersion: c.polVersion, RingSize: len(c.ring.buf),
		Tick: c.tick, ReevalAll: c.reevalAll, LastDecision: c.lastDecision, AuditSeq: c.auditSeq, AuditAcked: c.auditAcked,
		Issued: slices.Clip(slices.Clone(c.issued)), EventBase: c.ring.base, LastEventSeq: c.ring.lastSeq, Counters: c.counters,
		Victims: VictimsRecord{Inflight: c.vic.inflight, EndedAt: c.vic.endedAt, Ended: c.vic.ended, Episode: c.vic.episode, InEpisode: c.vic.inEpisode},
	}
	h := c.sys.halt
	st.System = SystemRecord{Level: c.sys.level, Avail: c.sys.avail, PSI: c.sys.psi, HasPSI: c.sys.hasPSI,
		AvailLevel: c.sys.availLevel, PSILevel: c.sys.psiLevel, Outcomes: c.sys.outcomes,
		HaltClaimed: h.claimed, HaltReason: h.reason, HaltTick: h.tick, HaltDeadline: h.deadline, HaltAuditSeq: h.auditSeq,
		HaltReleased: h.released, HaltDone: h.done, HaltTimedOut: h.timedOut}
	if len(st.Issued) == 0 {
		st.Issued = nil // one spelling of "none", as JSON reads it back
	}
	for _, i := range c.subjects.order {
		s, hs := &c.subjects.slots[i], &c.subjects.hot[i]
		st.Subjects = append(st.Subjects, SubjectRecord{
			ID: s.id, Instance: s.instance, Critical: s.critical, Pref: s.pref, Bytes: s.bytes, Coop: s.coop, Kernel: s.kernel,
			Published: s.published, HasKernel: s.hasKernel, UnderTicks: s.underTicks, UnderReported: s.underReported,
			KernelFailed: s.kernelFailed, KernelErr: s.kernelErr, Invalid: s.invalid, AboveSoft: s.aboveSoft, Denied: s.denied,
			Decided: s.decided, Decision: s.decision, Requested: s.requested, WouldKill: s.wouldKill, Rejected: s.rejected,
			RejectTick: s.rejectTick, Pending: hs.pending, HasPending: hs.hasPending, HotKernel: hs.kernel,
			HotHasKernel: hs.hasKernel, KernelNew: hs.kernelNew, Watch: hs.watch,
		})
	}
	for _, d := range c.decisions {
		st.Decisions = append(st.Decisions, DecisionRecord{ID: d.id, Subject: d.subject, Instance: d.instance, Bytes: d.bytes,
			Limit: d.limit, AuditSeq: d.auditSeq, Phase: uint8(d.phase), Victim: d.victim, Throttled: d.throttled,
			TermAcked: d.termAcked, Exited: d.exited, ExitReason: d.exitReason})
	}
	return st, nil
}

// Restore builds a core from st (a trace file's snapshot, so untrusted: every bound New
// and Step enforce is checked, and a bad State is refused whole with the field named).
func Restore(st State) (*Core, error) {
	if st.Version != StateVersion {
		return nil, fmt.Errorf("restore: state version %d, want %d", st.Version, StateVersion)
	}
	c, err := New(Config{Policy: st.Policy, RingSize: st.RingSize, PolicyVersion: st.PolicyVersion, EventSeqBase: st.LastEventSeq,
		AuditSeqBase: st.AuditSeq})
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if st.PolicyVersion == 0 || st.EventBase > st.LastEventSeq || st.AuditAcked > st.AuditSeq ||
		len(st.Subjects) > MaxSubjects || len(st.Decisions) > 2*MaxSubjects || len(st.Issued) > MaxKillBudget ||
		st.System.Level > LevelOOM || st.System.AvailLevel > LevelOOM || st.System.PSILevel > LevelOOM {
		return nil, errors.New("restore: state out of bounds (versions, seqs, sizes or levels)")
	}
	c.tick, c.reevalAll = st.Tick, st.ReevalAll
	c.lastDecision, c.auditSeq, c.auditAcked = st.LastDecision, st.AuditSeq, st.AuditAcked
	c.issued = slices.Clone(st.Issued)
	c.counters = st.Counters
	c.vic = victims{inflight: st.Victims.Inflight, endedAt: st.Victims.EndedAt, ended: st.Victims.Ended,
		episode: st.Victims.Episode, inEpisode: st.Victims.InEpisode}
	y := st.System
	c.sys = system{level: y.Level, avail: y.Avail, psi: y.PSI, hasPSI: y.HasPSI, availLevel: y.AvailLevel, psiLevel: y.PSILevel,
		outcomes: y.Outcomes, halt: halt{claimed: y.HaltClaimed, reason: y.HaltReason, tick: y.HaltTick, deadline: y.HaltDeadline,
			auditSeq: y.HaltAuditSeq, released: y.HaltReleased, done: y.HaltDone, timedOut: y.HaltTimedOut}}
	for k, r := range st.Subjects {
		if err := ValidateSubjectID(r.ID); err != nil {
			return nil, fmt.Errorf("restore: subjects[%d]: %w", k, err)
		}
		if k > 0 && st.Subjects[k-1].ID >= r.ID {
			return nil, fmt.Errorf("restore: subjects[%d]: ids not sorted and unique", k)
		}
		if r.Pref > PreferenceNever {
			return nil, fmt.Errorf("restore: subjects[%d]: preference %d", k, r.Pref)
		}
		s, i := c.subjects.add(r.ID)
		c.subjects.setInstance(i, r.Instance)
		*s = subject{id: r.ID, instance: r.Instance, critical: r.Critical, pref: r.Pref, bytes: r.Bytes, coop: r.Coop,
			kernel: r.Kernel, published: r.Published, hasKernel: r.HasKernel, underTicks: r.UnderTicks,
			underReported: r.UnderReported, kernelFailed: r.KernelFailed, kernelErr: clip(r.KernelErr), invalid: r.Invalid,
			aboveSoft: r.AboveSoft, denied: r.Denied, decided: r.Decided, decision: r.Decision, requested: r.Requested,
			wouldKill: r.WouldKill, rejected: r.Rejected, rejectTick: r.RejectTick}
		s.soft, s.hard = c.limits(s.id)
		s.signal = c.signalOf(s.id)
		s.dryRun = c.dryRunOf(s.id)
		h := &c.subjects.hot[i]
		h.pending, h.hasPending, h.kernel, h.hasKernel, h.kernelNew, h.watch = r.Pending, r.HasPending, r.HotKernel, r.HotHasKernel, r.KernelNew, r.Watch
		if h.due() {
			c.subjects.markDirty(h, i)
		}
	}
	for k, r := range st.Decisions {
		if r.ID == 0 || k > 0 && st.Decisions[k-1].ID >= r.ID || r.ID > st.LastDecision || phase(r.Phase) > phaseAdopted {
			return nil, fmt.Errorf("restore: decisions[%d]: id %d or phase %d out of order or range", k, r.ID, r.Phase)
		}
		if err := ValidateSubjectID(r.Subject); err != nil {
			return nil, fmt.Errorf("restore: decisions[%d]: %w", k, err)
		}
		c.decisions = append(c.decisions, decision{id: r.ID, subject: r.Subject, instance: r.Instance, bytes: r.Bytes,
			limit: r.Limit, auditSeq: r.AuditSeq, phase: phase(r.Phase), victim: r.Victim, throttled: r.Throttled,
			termAcked: r.TermAcked, exited: r.Exited, exitReason: clip(r.ExitReason)})
	}
	// The ring: seqs continue; the content before the snapshot is not kept.
	c.ring.base, c.ring.lastSeq = st.LastEventSeq, st.LastEventSeq
	return c, nil
}
