package policy

import (
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// This file is victim selection under system pressure (issue 14): while the pressure
// level is at or above Policy.Victims' level, the core kills one non-critical subject
// at a time, the one with the highest score, instead of waiting for the oom level and
// a reboot of the whole machine.
//
// The score of a candidate is its enforced reading (subject.enforced: the kernel's
// working set under signal max or kernel) per mille of its own hard limit, in integer
// arithmetic (128-bit intermediate, saturating), so the same inputs pick the same
// subject on every platform:
//
//	score = bytes*1000/hard  + PreferPoints (prefer)  or  - AvoidPoints (avoid, floor 0)
//
// The highest score wins; equal scores go to the smaller subject id (subjects are
// walked in id order and only a strictly higher score displaces). Candidates are the
// registered instances that are not critical (defaults, policy list or manifest),
// whose preference is not never, that have no kill decision yet in their lifetime
// (a victim decision is that instance's one decision), and that have a reading above
// zero (killing a subject with nothing to free helps no one).
//
// Escalation: one victim decision at a time. The next is picked at the first tick at
// which the previous one has ended (killed, refused, cancelled by an exit, or denied
// at release) and Victims.Settle() ticks have passed since it ended, if the level is
// still at or above the victim level. Nothing is picked once the halt token is
// claimed: reaching oom still claims it at once, victim in flight or not (system.go),
// because a machine at oom cannot wait for one more exit.

// victims is the core's victim-selection state.
type victims struct {
	inflight  uint64 // the live victim decision (0: none)
	endedAt   uint64 // tick at which the last victim decision ended (valid when ended)
	ended     bool
	episode   uint64 // counts episodes: runs of ticks at or above the victim level
	inEpisode bool
}

// VictimScore is one candidate's standing.
type VictimScore struct {
	Subject    string
	Instance   uint64
	Bytes      uint64 // the enforced reading the score was computed from
	Hard       uint64 // the subject's hard limit (the score's denominator)
	Preference Preference
	Score      uint64
}

// VictimChoice is whom the core picks (or would pick) and why.
type VictimChoice struct {
	VictimScore
	// RunnersUp are the next best candidates, best first (at most MaxRunnersUp).
	RunnersUp []VictimScore
	// Reason is the text the decision's audit record and killDecided event carry.
	Reason string
	// Hold says why the core would not decide this now ("" = it would, at the next
	// tick): "victims off", "levels off", "level=<l> below <l>", "halt claimed",
	// "victim decision=<n> in flight", "settling until tick <t>" or "dry run".
	Hold string
}

// MaxRunnersUp is how many runners-up a victim reason names. Two keep the reason
// within MaxReasonBytes with 64-byte subject ids: a candidate is at or below its hard
// limit (above it, it already has its hard-limit decision), so a score has at most
// six digits (1000 + MaxVictimPoints).
const MaxRunnersUp = 2

// VictimPreview returns whom the core would pick as a pressure victim now, with the
// score, the runners-up and why it would not act yet (Hold), without deciding or
// emitting anything. ok is false when no subject is a candidate. It walks every
// subject: O(subjects).
func (c *Core) VictimPreview() (VictimChoice, bool) {
	top, n := c.rankVictims()
	if n == 0 {
		return VictimChoice{}, false
	}
	ch := VictimChoice{VictimScore: c.victimScore(top[0]), Reason: c.victimReason(top[:n]), Hold: c.victimHold()}
	for _, i := range top[1:n] {
		ch.RunnersUp = append(ch.RunnersUp, c.victimScore(i))
	}
	return ch, true
}

// victimHold is why no victim decision would be made at the next tick ("" if one
// would).
func (c *Core) victimHold() string {
	if h := c.victimGate(); h != "" {
		return h
	}
	if c.pol.Victims.DryRun || c.pol.DryRun {
		return "dry run"
	}
	return c.victimBusy()
}

// victimGate holds both decisions and dry-run reports.
func (c *Core) victimGate() string {
	at, on := c.pol.Victims.At()
	switch {
	case !on:
		return "victims off"
	case !c.pol.Levels.Enabled():
		return "levels off"
	case c.sys.level < at:
		return "level=" + c.sys.level.String() + " below " + at.String()
	case c.sys.halt.claimed:
		return "halt claimed"
	}
	return ""
}

// victimBusy holds decisions only: one victim at a time, then the settle ticks.
func (c *Core) victimBusy() string {
	v := &c.vic
	if v.inflight != 0 {
		return "victim decision=" + strconv.FormatUint(v.inflight, 10) + " in flight"
	}
	if until := v.endedAt + c.pol.Victims.Settle(); v.ended && c.tick < until {
		return "settling until tick " + strconv.FormatUint(until, 10)
	}
	return ""
}

// pickVictim runs at every tick, after the subjects were evaluated (so a subject over
// its own hard limit got that decision first and is no candidate).
func (c *Core) pickVictim() {
	if c.victimGate() != "" {
		c.vic.inEpisode = false
		return
	}
	if !c.vic.inEpisode {
		c.vic.inEpisode = true
		c.vic.episode++
	}
	dry := c.pol.Victims.DryRun || c.pol.DryRun
	if !dry && c.victimBusy() != "" {
		return
	}
	top, n := c.rankVictims()
	if n == 0 {
		return
	}
	s := &c.subjects.slots[top[0]]
	reason := c.victimReason(top[:n])
	if dry {
		if s.wouldKill != c.vic.episode {
			s.wouldKill = c.vic.episode
			c.emit(Event{Subject: s.id, Kind: EventVictimWouldKill, Bytes: s.bytes, Limit: s.hard, Reason: reason})
		}
		return
	}
	c.decideVictim(s, reason)
}

// decideVictim makes s's one kill decision, audited like a hard-limit decision; the
// rest of its way (audit ack, budget, terminate, killed) is the same machinery.
func (c *Core) decideVictim(s *subject, reason string) {
	s.decided = true
	c.lastDecision++
	d := decision{id: c.lastDecision, subject: s.id, instance: s.instance, bytes: s.bytes, limit: s.hard, victim: true}
	d.auditSeq = c.appendAudit(AuditRecord{Kind: EventKillDecided, Subject: s.id, Instance: s.instance, Bytes: s.bytes, Limit: s.hard, Decision: d.id, Reason: reason})
	c.decisions = append(c.decisions, d)
	s.decision = d.id
	c.vic.inflight = d.id
	c.emit(Event{Subject: s.id, Kind: EventKillDecided, Bytes: s.bytes, Limit: s.hard, Decision: d.id, Reason: reason})
}

// victimEnded is called when the victim decision in flight ends, however it ends.
func (c *Core) victimEnded() {
	c.vic.inflight = 0
	c.vic.ended = true
	c.vic.endedAt = c.tick
}

// rankVictims returns the slots of the best 1+MaxRunnersUp candidates, best first,
// and how many there are. It walks subjects in id order and allocates nothing.
func (c *Core) rankVictims() (top [1 + MaxRunnersUp]uint32, n int) {
	var scores [len(top)]uint64
	for _, i := range c.subjects.order {
		s := &c.subjects.slots[i]
		pref := c.preferenceOf(s)
		if s.decided || s.decision != 0 || s.bytes == 0 || pref == PreferenceNever || c.isCritical(s.id, s.critical) ||
			s.dryRun && !c.pol.DryRun {
			continue
		}
		sc := Score(s.bytes, s.hard, pref, c.pol.Victims)
		// Insert after every entry with a score >= sc: an earlier (smaller) id keeps
		// its place on a tie.
		pos := n
		for pos > 0 && scores[pos-1] < sc {
			pos--
		}
		if pos == len(top) {
			continue
		}
		if n < len(top) {
			n++
		}
		copy(top[pos+1:n], top[pos:n-1])
		copy(scores[pos+1:n], scores[pos:n-1])
		top[pos], scores[pos] = i, sc
	}
	return top, n
}

// Score is a candidate's victim score: bytes per mille of hard (saturating at the
// largest uint64, for any input; a candidate's is at most 1000), plus v.PreferBy() for prefer or minus v.AvoidBy() for avoid
// (floor 0). hard must be > 0, as every valid policy's is.
func Score(bytes, hard uint64, pref Preference, v Victims) uint64 {
	hi, lo := bits.Mul64(bytes, 1000)
	base := uint64(math.MaxUint64)
	if hi < hard {
		base, _ = bits.Div64(hi, lo, hard)
	}
	switch pref {
	case PreferencePrefer:
		return satAdd(base, v.PreferBy())
	case PreferenceAvoid:
		return base - min(base, v.AvoidBy())
	}
	return base
}

func (c *Core) victimScore(i uint32) VictimScore {
	s := &c.subjects.slots[i]
	pref := c.preferenceOf(s)
	return VictimScore{Subject: s.id, Instance: s.instance, Bytes: s.bytes, Hard: s.hard, Preference: pref,
		Score: Score(s.bytes, s.hard, pref, c.pol.Victims)}
}

// victimReason is "pressure victim: level=<l> score=<n>[ pref=<p>] runners-up=<id>:<n>,..."
// ("runners-up=none" when it was the only candidate). At most ~240 bytes.
func (c *Core) victimReason(top []uint32) string {
	var b strings.Builder
	w := c.victimScore(top[0])
	b.WriteString(ReasonVictim + ": level=" + c.sys.level.String() + " score=" + strconv.FormatUint(w.Score, 10))
	if w.Preference != PreferenceNone {
		b.WriteString(" pref=" + w.Preference.String())
	}
	b.WriteString(" runners-up=")
	if len(top) == 1 {
		b.WriteString("none")
	}
	for k, i := range top[1:] {
		if k > 0 {
			b.WriteByte(',')
		}
		r := c.victimScore(i)
		b.WriteString(r.Subject + ":" + strconv.FormatUint(r.Score, 10))
	}
	return clip(b.String())
}

// preferenceOf is s's effective preference: never from the registration always holds;
// otherwise the policy's lists override the registration.
func (c *Core) preferenceOf(s *subject) Preference {
	if s.pref == PreferenceNever {
		return PreferenceNever
	}
	if p, ok := c.prefs[s.id]; ok {
		return p
	}
	return s.pref
}
