package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A trace is the core's input sequence, one JSON object per line after a header line.
// Replaying it through a fresh core with the same Config reproduces every output byte
// for byte: that is how a field report becomes a failing test.

// traceHeader is the first line of every trace; the version changes only if an old
// trace could no longer be replayed as written.
type traceHeader struct {
	Trace   string `json:"trace"`
	Version int    `json:"version"`
}

const (
	traceName    = "oomd-policy"
	traceVersion = 1
)

// EncodeTrace writes inputs as a trace.
func EncodeTrace(w io.Writer, inputs []Input) error {
	enc := json.NewEncoder(w)
	if err := enc.Encode(traceHeader{Trace: traceName, Version: traceVersion}); err != nil {
		return fmt.Errorf("write trace header: %w", err)
	}
	for n, in := range inputs {
		if err := enc.Encode(in); err != nil {
			return fmt.Errorf("write trace input %d: %w", n+1, err)
		}
	}
	return nil
}

// DecodeTrace reads a trace written by EncodeTrace. Unknown fields are an error, so a
// trace from a newer core is refused instead of being replayed wrongly.
func DecodeTrace(r io.Reader) ([]Input, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var h traceHeader
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("read trace header: %w", err)
	}
	if h.Trace != traceName || h.Version != traceVersion {
		return nil, fmt.Errorf("read trace header: got %q version %d, want %q version %d", h.Trace, h.Version, traceName, traceVersion)
	}
	var inputs []Input
	for {
		var in Input
		err := dec.Decode(&in)
		if errors.Is(err, io.EOF) {
			return inputs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read trace input %d: %w", len(inputs)+1, err)
		}
		inputs = append(inputs, in)
	}
}

// Replay runs inputs through a new core and renders, for each input, the input itself,
// the error Step returned if any, and the Ready it produced (FormatReady). Advance is
// called after every step, so each Ready shows only what that step produced. Replay
// does not acknowledge anything on its own: acknowledgements are inputs in the trace.
func Replay(cfg Config, inputs []Input) ([]byte, error) {
	c, err := New(cfg)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	var b bytes.Buffer
	for _, in := range inputs {
		b.WriteString("> ")
		b.WriteString(FormatInput(in))
		b.WriteByte('\n')
		if err := c.Step(in); err != nil {
			b.WriteString("error: ")
			b.WriteString(err.Error())
			b.WriteByte('\n')
		}
		b.WriteString(FormatReady(c.Ready()))
		c.Advance()
	}
	return b.Bytes(), nil
}

// FormatReady renders rd as stable text, one line per item: audit records, terminate
// requests, halt requests, reboot outcomes, then events, each in their slice order.
// Zero fields are left out; reasons are quoted.
func FormatReady(rd Ready) string {
	var b strings.Builder
	for _, r := range rd.Audit {
		b.WriteString(FormatAudit(r))
		b.WriteByte('\n')
	}
	for _, t := range rd.Terminate {
		b.WriteString(FormatTerminate(t))
		b.WriteByte('\n')
	}
	for _, h := range rd.HaltTimer {
		var l line
		l.WriteString("haltTimer")
		l.str("ms", strconv.FormatUint(h.Ms, 10))
		b.WriteString(l.String())
		b.WriteByte('\n')
	}
	for _, h := range rd.Halt {
		var l line
		l.WriteString("halt")
		l.str("reason", h.Reason)
		l.str("tick", strconv.FormatUint(h.Tick, 10))
		l.str("timeoutTicks", strconv.FormatUint(h.TimeoutTicks, 10))
		b.WriteString(l.String())
		b.WriteByte('\n')
	}
	for _, r := range rd.Reboot {
		var l line
		l.WriteString("reboot")
		l.str("reason", r.Reason)
		l.str("graceful", strconv.FormatBool(r.Graceful))
		l.str("timedOut", strconv.FormatBool(r.TimedOut))
		l.str("ticks", strconv.FormatUint(r.Ticks, 10))
		l.quoted("notStopped", strings.Join(r.NotStopped, ","))
		b.WriteString(l.String())
		b.WriteByte('\n')
	}
	for _, ev := range rd.Events {
		b.WriteString(FormatEvent(ev, Canonical))
		b.WriteByte('\n')
	}
	return b.String()
}

// line builds "word k=v k=v" with zero values left out.
type line struct{ strings.Builder }

func (l *line) str(k, v string) {
	if v != "" {
		l.WriteByte(' ')
		l.WriteString(k)
		l.WriteByte('=')
		l.WriteString(v)
	}
}

func (l *line) num(k string, v uint64) {
	if v != 0 {
		l.str(k, strconv.FormatUint(v, 10))
	}
}

// size writes a byte count: exact in the Canonical form, in units for people in the
// Human one; zero is left out.
func (l *line) size(k string, v uint64, form TextForm) {
	if form == Human && v != 0 {
		l.str(k, CompactBytes(v))
		return
	}
	l.num(k, v)
}

// id writes a subject id bare when it is well-formed and quoted otherwise, so a
// hostile id cannot fake fields in the line.
func (l *line) id(k, v string) {
	if ValidateSubjectID(v) != nil {
		v = strconv.Quote(v)
	}
	l.str(k, v)
}

func (l *line) quoted(k, v string) {
	if v != "" {
		l.str(k, strconv.Quote(v))
	}
}

// TextForm is which of its two forms FormatEvent writes. There are two because they
// have different readers, and neither may change for the other's sake:
//
//   - Canonical is the core's own text, for replay and tests: "event" first, every key
//     named, exact numbers, the reason quoted so that no reason can pass for a field.
//     Replay output (FormatReady, oomctl replay's tests, the golden files) is compared
//     byte for byte, so this form never changes.
//   - Human is for people (oomctl's events, replay and what-if output): the kind bare,
//     sizes in 1024-based units without a space (bytes=16MiB), the reason as written.
//     Exact values are in oomctl's --json.
//
// Both leave zero fields out and keep the same field order.
type TextForm uint8

const (
	Canonical TextForm = iota
	Human
)

// FormatEvent renders one event on one line, in the given form. It is the one place
// that turns an event into text.
func FormatEvent(ev Event, form TextForm) string {
	var l line
	if form == Canonical {
		l.WriteString("event")
	}
	l.str("seq", strconv.FormatUint(ev.Seq, 10))
	l.str("tick", strconv.FormatUint(ev.Tick, 10))
	if form == Canonical {
		l.str("kind", ev.Kind.String())
	} else {
		l.WriteString(" " + ev.Kind.String())
	}
	l.str("subject", ev.Subject)
	l.size("bytes", ev.Bytes, form)
	l.size("limit", ev.Limit, form)
	l.num("decision", ev.Decision)
	if form == Canonical {
		l.quoted("reason", ev.Reason)
	} else {
		l.str("reason", ev.Reason)
	}
	return strings.TrimPrefix(l.String(), " ")
}

// FormatAudit renders one audit record on one line.
func FormatAudit(r AuditRecord) string {
	var l line
	l.WriteString("audit")
	l.str("writerSeq", strconv.FormatUint(r.WriterSeq, 10))
	l.str("tick", strconv.FormatUint(r.Tick, 10))
	l.str("kind", r.Kind.String())
	l.str("subject", r.Subject)
	l.num("instance", r.Instance)
	l.num("bytes", r.Bytes)
	l.num("limit", r.Limit)
	l.num("decision", r.Decision)
	l.quoted("reason", r.Reason)
	return l.String()
}

// FormatTerminate renders one terminate request on one line.
func FormatTerminate(t TerminateRequest) string {
	var l line
	l.WriteString("terminate")
	l.str("decision", strconv.FormatUint(t.Decision, 10))
	l.str("subject", t.Subject)
	l.num("instance", t.Instance)
	l.num("bytes", t.Bytes)
	l.num("limit", t.Limit)
	l.quoted("reason", t.Reason)
	return l.String()
}

// FormatInput renders one input on one line, naming only the fields its kind uses.
func FormatInput(in Input) string {
	var l line
	l.WriteString(in.Kind.String())
	switch in.Kind {
	case InputPolicy:
		if in.Policy == nil {
			l.str("policy", "nil")
			break
		}
		p := in.Policy
		l.str("soft", strconv.FormatUint(p.SoftBytes, 10))
		l.str("hard", strconv.FormatUint(p.HardBytes, 10))
		l.str("sampleMs", strconv.FormatUint(uint64(p.SampleMs), 10))
		l.str("budget", strconv.FormatUint(uint64(p.KillBudget), 10))
		l.str("window", strconv.FormatUint(uint64(p.KillWindowTicks), 10))
		l.str("critical", strings.Join(p.Critical, ","))
		for _, o := range p.Overrides {
			l.str("override", fmt.Sprintf("%s:%d:%d", o.Subject, o.SoftBytes, o.HardBytes))
		}
		if lv := p.Levels; lv.Enabled() {
			l.str("levels", fmt.Sprintf("%d:%d:%d:%d", lv.WarningBytes, lv.ImminentOOMBytes, lv.OOMBytes, lv.HysteresisBytes))
		}
		l.num("oomTimeoutMs", uint64(p.OOMTimeoutMs))
		if v := p.Victims; v.Level != VictimLevelDefault {
			l.str("victimLevel", v.Level.String())
		}
		l.num("preferPoints", uint64(p.Victims.PreferPoints))
		l.num("avoidPoints", uint64(p.Victims.AvoidPoints))
		l.num("settleTicks", uint64(p.Victims.SettleTicks))
		if p.Victims.DryRun {
			l.str("dryRun", "true")
		}
		l.str("prefer", strings.Join(p.Victims.Prefer, ","))
		l.str("avoid", strings.Join(p.Victims.Avoid, ","))
		l.str("never", strings.Join(p.Victims.Never, ","))
	case InputRegister:
		l.id("subject", in.Subject)
		l.str("instance", strconv.FormatUint(in.Instance, 10))
		if in.Critical {
			l.str("critical", "true")
		}
		if in.Preference != PreferenceNone {
			l.str("preference", in.Preference.String())
		}
	case InputSample:
		l.id("subject", in.Subject)
		l.str("instance", strconv.FormatUint(in.Instance, 10))
		l.id("claimed", in.Claimed)
		l.str("bytes", strconv.FormatUint(in.Bytes, 10))
		if in.Count > 1 {
			l.num("count", in.Count)
		}
	case InputAuditAck:
		l.str("seq", strconv.FormatUint(in.Seq, 10))
	case InputAuditSpilled:
		l.str("seq", strconv.FormatUint(in.Seq, 10))
		l.quoted("reason", in.Reason)
	case InputTerminateAck:
		l.str("decision", strconv.FormatUint(in.Decision, 10))
	case InputTerminateRefused:
		l.str("decision", strconv.FormatUint(in.Decision, 10))
		l.quoted("reason", in.Reason)
	case InputExited:
		l.id("subject", in.Subject)
		l.str("instance", strconv.FormatUint(in.Instance, 10))
		if in.Decision != 0 {
			l.str("decision", strconv.FormatUint(in.Decision, 10))
		}
		l.quoted("reason", in.Reason)
	case InputKernel:
		l.id("subject", in.Subject)
		l.str("instance", strconv.FormatUint(in.Instance, 10))
		if in.Reason != "" {
			l.quoted("error", in.Reason)
		} else {
			l.str("bytes", strconv.FormatUint(in.Bytes, 10))
		}
	case InputMemAvailable:
		l.str("bytes", strconv.FormatUint(in.Bytes, 10))
	case InputRebootRequest:
		l.quoted("reason", in.Reason)
	case InputTeardownDone:
		l.str("graceful", strconv.FormatBool(in.Graceful))
		l.quoted("notStopped", strings.Join(in.NotStopped, ","))
	case InputTick, InputHaltTimeout:
	default:
		l.str("raw", strconv.FormatUint(uint64(in.Kind), 10))
	}
	return l.String()
}
