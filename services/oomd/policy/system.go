package policy

import (
	"strconv"
	"strings"
)

// This file is the core's side of system OOM (docs/reliability/system-oom.md: oomd plays
// the kernel's memory watchdog): the pressure level derived from MemAvailable, the halt token, and the
// bound on the teardown that follows a claim. It lives in the core, not beside it, so
// that level changes, token claims and outcomes share the one event sequence and the
// one gap-free audit sequence with everything else, and replay with it.

// Level is the system memory-pressure level; values mirror oomdpb.PressureLevel.
type Level uint8

const (
	LevelNormal Level = iota
	LevelWarning
	LevelImminentOOM
	LevelOOM
)

var levelNames = [...]string{"normal", "warning", "imminentOom", "oom"}

func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return "unknown"
}

// Reboot reasons, by their oomdpb.RebootReason names.
const (
	RebootOOM         = "oom"
	RebootUserRequest = "userRequest"
)

// MaxNotStopped bounds the service names an outcome carries; beyond it the last entry
// says how many more there were ("+<n> more").
const MaxNotStopped = 32

// threshold is the MemAvailable at or below which l is entered (0 for LevelNormal).
func (t LevelThresholds) threshold(l Level) uint64 {
	switch l {
	case LevelWarning:
		return t.WarningBytes
	case LevelImminentOOM:
		return t.ImminentOOMBytes
	case LevelOOM:
		return t.OOMBytes
	}
	return 0
}

// Next is the level after reading avail while at cur. A level is entered as soon as
// avail <= its threshold (several at once if avail fell that far) and left only when
// avail > its threshold + HysteresisBytes (again several at once). With thresholds off
// the level is always normal.
func (t LevelThresholds) Next(cur Level, avail uint64) Level {
	if !t.Enabled() {
		return LevelNormal
	}
	entered := LevelNormal
	for l := LevelOOM; l > LevelNormal; l-- {
		if avail <= t.threshold(l) {
			entered = l
			break
		}
	}
	if entered >= cur {
		return entered
	}
	next := min(cur, LevelOOM)
	for next > entered && avail > satAdd(t.threshold(next), t.HysteresisBytes) {
		next--
	}
	return next
}

// psiThreshold is the PSI reading at or above which l is entered (0: not from PSI).
func (t LevelThresholds) psiThreshold(l Level) uint32 {
	switch l {
	case LevelWarning:
		return t.PSIWarning
	case LevelImminentOOM:
		return t.PSIImminentOOM
	case LevelOOM:
		return t.PSIOOM
	}
	return 0
}

// NextPSI is the PSI level after reading full (hundredths of a percent) while at cur:
// entered as soon as full >= its threshold, left when full < threshold - PSIHysteresis.
func (t LevelThresholds) NextPSI(cur Level, full uint32) Level {
	if !t.Enabled() || !t.PSIEnabled() {
		return LevelNormal
	}
	entered := LevelNormal
	for l := LevelOOM; l > LevelNormal; l-- {
		if full >= t.psiThreshold(l) {
			entered = l
			break
		}
	}
	if entered >= cur {
		return entered
	}
	next := min(cur, LevelOOM)
	for next > entered && full+t.PSIHysteresis < t.psiThreshold(next) {
		next--
	}
	return next
}

func satAdd(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint64(0)
}

// system is the core's system-wide state.
type system struct {
	level                Level  // the level in force: the deeper of availLevel and psiLevel
	avail                uint64 // last MemAvailable read (0 before the first)
	psi                  uint32 // last PSI full avg10 read, hundredths of a percent
	hasPSI               bool
	availLevel, psiLevel Level
	halt                 halt
	outcomes             uint64 // outcomes produced (0 or 1: the token is claimed once)
}

// halt is the token. Once claimed it is never released in this core's lifetime: the
// claim ends with a reboot.
type halt struct {
	claimed  bool
	reason   string
	tick     uint64 // claimed at
	deadline uint64 // tick at which the bound passes
	auditSeq uint64 // its haltClaimed record
	released bool   // HaltRequest handed to the shell
	done     bool   // outcome produced
	timedOut bool
}

// HaltStatus is a read-only view of the halt token.
type HaltStatus struct {
	Claimed  bool
	Reason   string
	Tick     uint64
	Done     bool // the sequence ended (acknowledged or timed out)
	TimedOut bool
}

// Level returns the current pressure level and the last MemAvailable read.
func (c *Core) Level() (Level, uint64) { return c.sys.level, c.sys.avail }

// AuditDurable is the highest audit WriterSeq acknowledged durable (logd or the spill
// file).
func (c *Core) AuditDurable() uint64 { return c.auditAcked }

// AuditProduced is the highest audit WriterSeq handed out so far (Config.AuditSeqBase if
// none): AuditProduced - AuditDurable records are waiting to become durable.
func (c *Core) AuditProduced() uint64 { return c.auditSeq }

// Halt returns the state of the halt token.
func (c *Core) Halt() HaltStatus {
	h := c.sys.halt
	return HaltStatus{Claimed: h.claimed, Reason: h.reason, Tick: h.tick, Done: h.done, TimedOut: h.timedOut}
}

// HaltRefusal is the error text for a request that found the token claimed, as the
// client of requestReboot sees it.
func (h HaltStatus) HaltRefusal() string {
	return "halt token already claimed by " + h.Reason + " at tick " + strconv.FormatUint(h.Tick, 10)
}

func (c *Core) memAvailable(avail uint64) {
	c.sys.avail = avail
	c.sys.availLevel = c.pol.Levels.Next(c.sys.availLevel, avail)
	c.updateLevel()
}

// pressure takes a PSI reading (full avg10, hundredths of a percent).
func (c *Core) pressure(full uint32) {
	c.sys.psi, c.sys.hasPSI = full, true
	c.sys.psiLevel = c.pol.Levels.NextPSI(c.sys.psiLevel, full)
	c.updateLevel()
}

// updateLevel puts the deeper of the MemAvailable and PSI levels in force; reaching
// LevelOOM claims the halt token. A level that PSI holds deeper than MemAvailable says
// so in its reason.
func (c *Core) updateLevel() {
	next := max(c.sys.availLevel, c.sys.psiLevel)
	if next == c.sys.level {
		return
	}
	note := ""
	if c.sys.psiLevel > c.sys.availLevel {
		note = " psi-full-avg10=" + psiPercent(c.sys.psi)
	}
	c.setLevelNote(next, c.sys.avail, note)
	if next == LevelOOM {
		c.claimHalt(RebootOOM, c.sys.avail)
	}
}

// psiPercent renders hundredths of a percent as "12.34%".
func psiPercent(v uint32) string {
	frac := strconv.FormatUint(uint64(v%100), 10)
	if len(frac) == 1 {
		frac = "0" + frac
	}
	return strconv.FormatUint(uint64(v/100), 10) + "." + frac + "%"
}

// setLevel moves to level l, with an event and an audit record, if it differs.
func (c *Core) setLevel(l Level, avail uint64) { c.setLevelNote(l, avail, "") }

func (c *Core) setLevelNote(l Level, avail uint64, note string) {
	from := c.sys.level
	if l == from {
		return
	}
	c.sys.level = l
	t := c.pol.Levels
	// The bound that was crossed: a deeper level's threshold, or the hysteresis bound
	// above the shallowest level left.
	limit := t.threshold(l)
	if l < from {
		limit = satAdd(t.threshold(l+1), t.HysteresisBytes)
	}
	reason := from.String() + "->" + l.String() + note
	c.appendAudit(AuditRecord{Kind: EventLevelChanged, Bytes: avail, Limit: limit, Reason: reason})
	c.emit(Event{Kind: EventLevelChanged, Bytes: avail, Limit: limit, Reason: reason})
}

func (c *Core) rebootRequest(in *Input) error {
	if in.Reason != RebootUserRequest && in.Reason != RebootOOM {
		return badInput(in, "reason %q: want %q or %q", clip(in.Reason), RebootUserRequest, RebootOOM)
	}
	c.claimHalt(in.Reason, 0)
	return nil
}

// claimHalt claims the token for reason, or records that it was already claimed. The
// bound starts now, at the claim: if the haltClaimed record never becomes durable
// (logd hung) the teardown is never asked for, and the bound still ends the sequence.
func (c *Core) claimHalt(reason string, avail uint64) {
	h := &c.sys.halt
	if h.claimed {
		r := clip(reason + ": " + c.Halt().HaltRefusal())
		c.appendAudit(AuditRecord{Kind: EventHaltRefused, Bytes: avail, Reason: r})
		c.emit(Event{Kind: EventHaltRefused, Bytes: avail, Reason: r})
		return
	}
	*h = halt{claimed: true, reason: reason, tick: c.tick, deadline: c.tick + c.timeoutTicks()}
	c.haltTimer = append(c.haltTimer, HaltTimer{Ms: c.timeoutMs()})
	h.auditSeq = c.appendAudit(AuditRecord{Kind: EventHaltClaimed, Bytes: avail, Limit: c.pol.Levels.OOMBytes, Reason: reason})
	c.emit(Event{Kind: EventHaltClaimed, Bytes: avail, Reason: reason})
}

// timeoutMs is the bound: Policy.OOMTimeoutMs, or DefaultOOMTimeout when unset.
func (c *Core) timeoutMs() uint64 {
	if ms := uint64(c.pol.OOMTimeoutMs); ms != 0 {
		return ms
	}
	return DefaultOOMTimeout
}

// timeoutTicks is the bound in ticks, rounded up, so it is never shorter than
// configured (and at most one tick longer).
func (c *Core) timeoutTicks() uint64 {
	sample := uint64(c.pol.SampleMs)
	return max(1, (c.timeoutMs()+sample-1)/sample)
}

// releaseHalt hands out the HaltRequest once its haltClaimed record is durable.
func (c *Core) releaseHalt() {
	h := &c.sys.halt
	if !h.claimed || h.released || h.done || h.auditSeq > c.auditAcked {
		return
	}
	h.released = true
	c.halt = append(c.halt, HaltRequest{Reason: h.reason, Tick: h.tick, TimeoutTicks: h.deadline - h.tick})
}

// haltDeadline ends the sequence when the bound, counted in ticks, passed before
// execd's acknowledgement.
func (c *Core) haltDeadline() {
	h := &c.sys.halt
	if h.claimed && !h.done && c.tick >= h.deadline {
		c.timeOut("ticks")
	}
}

// haltTimeout is the same bound on the shell's wall clock. After the outcome it is a
// timer that fired late: ignored.
func (c *Core) haltTimeout(in *Input) error {
	h := &c.sys.halt
	if !h.claimed {
		return badInput(in, "no halt token was claimed")
	}
	if !h.done {
		c.timeOut("clock")
	}
	return nil
}

// timeOut ends the sequence without execd's acknowledgement. The services named are
// those still registered: execd never reported their exit. by says which clock.
func (c *Core) timeOut(by string) {
	h := &c.sys.halt
	ids := make([]string, 0, min(c.subjects.len(), MaxNotStopped))
	for _, i := range c.subjects.order {
		ids = append(ids, c.subjects.slots[i].id)
		if len(ids) == MaxNotStopped {
			break
		}
	}
	if more := c.subjects.len() - len(ids); more > 0 {
		ids[len(ids)-1] = "+" + strconv.Itoa(more+1) + " more"
	}
	h.timedOut = true
	c.finishHalt(EventRebootTimedOut, RebootOutcome{TimedOut: true, NotStopped: ids}, notStoppedReason(ids)+" by="+by)
}

func (c *Core) teardownDone(in *Input) error {
	h := &c.sys.halt
	switch {
	case !h.released:
		return badInput(in, "no teardown was requested")
	case h.done && !h.timedOut:
		return badInput(in, "the teardown was already acknowledged")
	case h.done:
		// The bound passed first; the outcome stands. Recorded so the journal shows
		// that execd did answer, and when.
		r := "ignored: after the timeout; " + summary(in.Graceful, in.NotStopped)
		c.appendAudit(AuditRecord{Kind: EventRebootAcked, Reason: clip(r)})
		c.emit(Event{Kind: EventRebootAcked, Reason: clip(r)})
		return nil
	}
	ids := make([]string, 0, min(len(in.NotStopped), MaxNotStopped))
	for _, id := range in.NotStopped {
		if len(ids) == MaxNotStopped {
			ids[len(ids)-1] = "+" + strconv.Itoa(len(in.NotStopped)-MaxNotStopped+1) + " more"
			break
		}
		ids = append(ids, printableID(id))
	}
	graceful := in.Graceful && len(ids) == 0
	c.finishHalt(EventRebootAcked, RebootOutcome{Graceful: graceful, NotStopped: ids}, summary(graceful, ids))
	return nil
}

func (c *Core) finishHalt(kind EventKind, out RebootOutcome, reason string) {
	h := &c.sys.halt
	h.done = true
	c.sys.outcomes++
	out.Reason = h.reason
	out.Ticks = c.tick - h.tick
	reason = clip(reason)
	c.appendAudit(AuditRecord{Kind: kind, Reason: reason})
	c.emit(Event{Kind: kind, Reason: reason})
	c.reboot = append(c.reboot, out)
}

func summary(graceful bool, notStopped []string) string {
	if graceful {
		return "graceful"
	}
	return notStoppedReason(notStopped)
}

func notStoppedReason(ids []string) string {
	return "notStopped=" + strings.Join(ids, ",")
}
