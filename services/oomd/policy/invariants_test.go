package policy

import (
	"fmt"
	"slices"
	"strings"
)

// checker is an independent observer of a core: it sees every input and every Ready
// and keeps its own books, so the safety properties are checked against what the core
// actually emitted rather than against its internal state. The fuzz target and the
// data-driven scenarios run it after every step.
type checker struct {
	c            *Core
	ringCap      int
	acked        uint64            // highest audit WriterSeq the shell acknowledged
	lastWriter   uint64            // last WriterSeq seen in Ready.Audit
	lastSeq      uint64            // last event seq seen
	decisionSeq  map[uint64]uint64 // decision -> WriterSeq of its killDecided record
	decisionInst map[uint64]subjInst
	decided      map[subjInst]bool
	regCritical  map[subjInst]bool
	regNever     map[subjInst]bool // registered with PreferenceNever
	requested    map[uint64]bool
	termAcked    map[uint64]bool
	exited       map[uint64]bool    // decision -> its instance's exit was reported
	live         map[string]uint64  // subject -> registered instance
	earlier      map[uint64]bool    // decision ids of earlier runs (Config.Durable)
	issued       []uint64           // ticks of every terminate request
	terms        []TerminateRequest // not yet taken by takeTerminates
	haltSeq      uint64             // WriterSeq of the haltClaimed record (0: none yet)
	haltDue      uint64             // tick at which the claim's bound passes
	halts        int                // HaltRequests handed out
	reboots      int                // RebootOutcomes handed out
	lastKind     InputKind          // the input being checked

	// Victims: the live victim decision (0: none), its instance and whether its
	// terminate was sent, and the tick the previous one ended at.
	victim       uint64
	victimInst   subjInst
	victimEnd    uint64
	victimEnded  bool
	victimCancel bool // the live victim decision ends if its instance goes before release
}

// takeTerminates returns the terminate requests seen since the last call, for a
// simulated shell to answer.
func (k *checker) takeTerminates() []TerminateRequest {
	out := k.terms
	k.terms = nil
	return out
}

type subjInst struct {
	subject  string
	instance uint64
}

func newChecker(c *Core, cfg Config) *checker {
	ring := cfg.RingSize
	if ring == 0 {
		ring = DefaultRingSize
	}
	k := &checker{
		c:            c,
		ringCap:      ring,
		acked:        cfg.AuditSeqBase,
		lastWriter:   cfg.AuditSeqBase,
		lastSeq:      cfg.EventSeqBase,
		decisionSeq:  map[uint64]uint64{},
		decisionInst: map[uint64]subjInst{},
		decided:      map[subjInst]bool{},
		regCritical:  map[subjInst]bool{},
		regNever:     map[subjInst]bool{},
		requested:    map[uint64]bool{},
		termAcked:    map[uint64]bool{},
		exited:       map[uint64]bool{},
		live:         map[string]uint64{},
		earlier:      map[uint64]bool{},
	}
	// Decisions of earlier runs were audited durably before this run (seq 0 is below
	// any ack).
	for _, d := range cfg.Durable {
		si := subjInst{d.Subject, d.Instance}
		k.decisionSeq[d.ID], k.decisionInst[d.ID], k.decided[si] = 0, si, true
		k.earlier[d.ID] = true
	}
	return k
}

// snapshot is the observable state used to prove that a failed Step changed nothing.
type snapshot struct {
	subjects []SubjectStatus
	counters Counters
	lastSeq  uint64
	tick     uint64
	version  uint64
	policy   string
}

func (k *checker) snap() snapshot {
	subs, _ := k.c.Subjects(MaxSubjects)
	return snapshot{subs, k.c.Counters(), k.c.LastSeq(), k.c.TickCount(), k.c.PolicyVersion(), fmt.Sprint(k.c.Policy())}
}

// step applies in, takes the Ready, checks every invariant, advances, and returns the
// Ready rendered by FormatReady, Step's error, and the first broken invariant.
func (k *checker) step(in Input) (string, error, error) {
	var before snapshot
	if k.c.HasReady() {
		return "", nil, fmt.Errorf("output pending before step")
	}
	before = k.snap()
	err := k.c.Step(in)
	if err != nil {
		if k.c.HasReady() {
			return "", err, fmt.Errorf("failed step %s produced output", FormatInput(in))
		}
		if after := k.snap(); fmt.Sprint(after) != fmt.Sprint(before) {
			return "", err, fmt.Errorf("failed step %s changed state:\nbefore %v\nafter  %v", FormatInput(in), before, after)
		}
		return "", err, nil
	}
	k.observe(in)
	rd := k.c.Ready()
	cerr := k.check(rd)
	out := FormatReady(rd)
	k.c.Advance()
	return out, nil, cerr
}

// observe books an input the core accepted.
func (k *checker) observe(in Input) {
	k.lastKind = in.Kind
	switch in.Kind {
	case InputAuditAck, InputAuditSpilled:
		k.acked = max(k.acked, in.Seq)
	case InputTerminateAck:
		k.termAcked[in.Decision] = true
	case InputExited:
		if k.victim != 0 && k.victimCancel && k.victimInst == (subjInst{in.Subject, in.Instance}) {
			k.endVictim() // exit before release: the decision is cancelled
		}
		for d, si := range k.decisionInst {
			if si == (subjInst{in.Subject, in.Instance}) {
				k.exited[d] = true
			}
		}
		if k.earlier[in.Decision] && k.decisionInst[in.Decision] == (subjInst{in.Subject, in.Instance}) {
			// An earlier run's terminate of that decision, acknowledged then, as the
			// exit report itself says.
			k.termAcked[in.Decision] = true
		}
		if k.live[in.Subject] == in.Instance {
			delete(k.live, in.Subject)
		}
	case InputRegister:
		// Registering the instance already registered is a no-op; anything else
		// starts a new lifetime with its own one-decision allowance.
		if inst, ok := k.live[in.Subject]; !ok || inst != in.Instance {
			if k.victim != 0 && k.victimCancel && k.victimInst.subject == in.Subject {
				k.endVictim() // a restart cancels the old instance's unreleased decision
			}
			si := subjInst{in.Subject, in.Instance}
			k.regNever[si] = in.Preference == PreferenceNever
			k.live[in.Subject] = in.Instance
			k.regCritical[si] = in.Critical
			k.decided[si] = false
		}
	}
}

func (k *checker) endVictim() {
	k.victim, k.victimEnd, k.victimEnded = 0, k.c.TickCount(), true
}

// checkVictim holds a victim decision (a killDecided record whose reason starts with
// ReasonVictim) to its rules: victims on and not a dry run, levels on and the level at
// or above the victim level, the halt token unclaimed, the subject neither critical
// nor never, no other victim decision live, and the settle ticks passed since the
// previous one ended.
func (k *checker) checkVictim(a AuditRecord, pol Policy, crit []string) error {
	si := subjInst{a.Subject, a.Instance}
	at, on := pol.Victims.At()
	lvl, _ := k.c.Level()
	switch {
	case !on || pol.Victims.DryRun || !pol.Levels.Enabled():
		return fmt.Errorf("victim decision %d with victims %+v, levels on %v", a.Decision, pol.Victims, pol.Levels.Enabled())
	case lvl < at:
		return fmt.Errorf("victim decision %d at level %s, below %s", a.Decision, lvl, at)
	case k.haltSeq != 0:
		return fmt.Errorf("victim decision %d after the halt token was claimed", a.Decision)
	case slices.Contains(crit, a.Subject) || k.regCritical[si]:
		return fmt.Errorf("victim decision %d for critical subject %s", a.Decision, a.Subject)
	case slices.Contains(pol.Victims.Never, a.Subject) || k.regNever[si]:
		return fmt.Errorf("victim decision %d for %s, whose preference is never", a.Decision, a.Subject)
	case k.victim != 0:
		return fmt.Errorf("victim decision %d while victim decision %d is live", a.Decision, k.victim)
	case k.victimEnded && a.Tick < k.victimEnd+pol.Victims.Settle():
		return fmt.Errorf("victim decision %d at tick %d, the previous ended at tick %d, settle %d", a.Decision, a.Tick, k.victimEnd, pol.Victims.Settle())
	}
	k.victim, k.victimInst, k.victimCancel = a.Decision, si, true
	return nil
}

func (k *checker) check(rd Ready) error {
	pol := k.c.Policy()
	crit := pol.EffectiveCritical()
	for _, a := range rd.Audit {
		if a.WriterSeq != k.lastWriter+1 {
			return fmt.Errorf("audit writerSeq %d after %d: not gap-free", a.WriterSeq, k.lastWriter)
		}
		k.lastWriter = a.WriterSeq
		if a.Kind == EventHaltClaimed {
			if k.haltSeq != 0 {
				return fmt.Errorf("halt token claimed twice (records %d and %d)", k.haltSeq, a.WriterSeq)
			}
			k.haltSeq, k.haltDue = a.WriterSeq, a.Tick+k.c.timeoutTicks()
		}
		if a.Kind == EventKillDecided {
			si := subjInst{a.Subject, a.Instance}
			if k.decided[si] {
				return fmt.Errorf("second kill decision for %v", si)
			}
			k.decided[si] = true
			k.decisionSeq[a.Decision] = a.WriterSeq
			k.decisionInst[a.Decision] = si
			if strings.HasPrefix(a.Reason, ReasonVictim+":") {
				if err := k.checkVictim(a, pol, crit); err != nil {
					return err
				}
			}
		}
	}
	for _, t := range rd.Terminate {
		seq, ok := k.decisionSeq[t.Decision]
		if !ok || seq > k.acked {
			return fmt.Errorf("terminate for decision %d before its audit record (seq %d, known %v) was acknowledged (acked %d)", t.Decision, seq, ok, k.acked)
		}
		si := subjInst{t.Subject, t.Instance}
		if slices.Contains(crit, t.Subject) || k.regCritical[si] {
			return fmt.Errorf("terminate for critical subject %s", t.Subject)
		}
		if k.exited[t.Decision] {
			return fmt.Errorf("terminate for exited instance %v", si)
		}
		if k.requested[t.Decision] {
			return fmt.Errorf("second terminate for decision %d", t.Decision)
		}
		k.requested[t.Decision] = true
		if t.Decision == k.victim {
			k.victimCancel = false
		}
		k.terms = append(k.terms, t)
		tick := k.c.TickCount()
		k.issued = append(k.issued, tick)
		inWindow := 0
		for _, at := range k.issued {
			if at+uint64(pol.KillWindowTicks) > tick {
				inWindow++
			}
		}
		if inWindow > int(pol.KillBudget) {
			return fmt.Errorf("%d terminate requests in the %d ticks up to tick %d, budget %d", inWindow, pol.KillWindowTicks, tick, pol.KillBudget)
		}
	}
	for _, h := range rd.Halt {
		k.halts++
		if k.halts > 1 {
			return fmt.Errorf("second halt request %+v", h)
		}
		if k.haltSeq == 0 || k.haltSeq > k.acked {
			return fmt.Errorf("halt request before its haltClaimed record (seq %d) was acknowledged (acked %d)", k.haltSeq, k.acked)
		}
	}
	for _, r := range rd.Reboot {
		k.reboots++
		if k.reboots > 1 || k.haltSeq == 0 {
			return fmt.Errorf("reboot outcome %+v: number %d, halt claimed %v", r, k.reboots, k.haltSeq != 0)
		}
		if r.Graceful && (r.TimedOut || len(r.NotStopped) > 0) {
			return fmt.Errorf("graceful outcome %+v that timed out or left services running", r)
		}
		want := k.haltDue
		if r.TimedOut && k.c.TickCount() > want {
			return fmt.Errorf("timed out at tick %d, after the bound (tick %d)", k.c.TickCount(), want)
		}
		if r.TimedOut && k.c.TickCount() < want && k.lastKind != InputHaltTimeout {
			return fmt.Errorf("timed out at tick %d, before the bound (tick %d), without the wall clock saying so", k.c.TickCount(), want)
		}
		if !r.TimedOut && k.c.TickCount() >= want {
			return fmt.Errorf("acknowledged at tick %d, after the bound (tick %d)", k.c.TickCount(), want)
		}
	}
	for _, ev := range rd.Events {
		if ev.Seq != k.lastSeq+1 {
			return fmt.Errorf("event seq %d after %d", ev.Seq, k.lastSeq)
		}
		k.lastSeq = ev.Seq
		switch ev.Kind {
		case EventKilled, EventKillRefused, EventKillDenied:
			if ev.Decision != 0 && ev.Decision == k.victim {
				k.endVictim()
			}
		case EventVictimWouldKill:
			if !pol.Victims.DryRun || ev.Decision != 0 {
				return fmt.Errorf("victimWouldKill %+v without a dry run", ev)
			}
		}
		if ev.Kind == EventKilled {
			if !k.termAcked[ev.Decision] || !k.exited[ev.Decision] {
				return fmt.Errorf("killed for decision %d without terminate ack (%v) and exit (%v)", ev.Decision, k.termAcked[ev.Decision], k.exited[ev.Decision])
			}
		}
	}
	evs, _, _ := k.c.Events(0, k.ringCap+1)
	if len(evs) > k.ringCap {
		return fmt.Errorf("ring holds %d events, capacity %d", len(evs), k.ringCap)
	}
	return nil
}
