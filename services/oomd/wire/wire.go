// Package wire converts between plain Go values and their Cap'n Proto forms in
// gen/oomdpb: the policy core's values (Policy, Event, AuditRecord) and the other answers
// of oomd's Control interface (Status, RebootRecord, JournalEntry). Each has one encoder
// and one decoder, shared by oomd, its clients (ctlclient, oomctl) and the test fakes
// that stand in for oomd: SetX writes an X into its schema struct, and the decoder is
// named after the core's type (Policy, Event, AuditRecord) or, for wire's own types,
// ReadX. Reading from the wire checks every bound the schema states, so a peer's bad
// input fails with an error naming the field.
package wire

import (
	"fmt"

	capnp "capnproto.org/go/capnp/v3"

	"oomd.dev/oomd/gen/bounds"
	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

// Bounds on lists and text read from peers.
const (
	MaxReasonBytes = bounds.MaxReasonBytes
	MaxPage        = bounds.MaxReadLimit
)

// SetPolicy writes p into dst.
func SetPolicy(dst oomdpb.Policy, p policy.Policy) error {
	dst.SetSoftBytes(p.SoftBytes)
	dst.SetHardBytes(p.HardBytes)
	dst.SetSampleMs(p.SampleMs)
	dst.SetKillBudget(p.KillBudget)
	dst.SetKillWindowTicks(p.KillWindowTicks)
	dst.SetOomTimeoutMs(p.OOMTimeoutMs)
	if err := setTextList("policy.critical", dst.NewCritical, p.Critical); err != nil {
		return err
	}
	ov, err := dst.NewOverrides(int32(len(p.Overrides)))
	if err != nil {
		return err
	}
	for i, o := range p.Overrides {
		e := ov.At(i)
		if err := e.SetSubject(o.Subject); err != nil {
			return err
		}
		e.SetSoftBytes(o.SoftBytes)
		e.SetHardBytes(o.HardBytes)
		if o.Signal != nil {
			e.SetHasSignal(true)
			e.SetSignal(oomdpb.Signal(*o.Signal))
		}
		if o.DryRun != nil {
			e.SetHasDryRun(true)
			e.SetDryRun(*o.DryRun)
		}
	}
	dst.SetSignal(oomdpb.Signal(p.Signal))
	dst.SetDryRun(p.DryRun)
	if p.UnderReport != (policy.UnderReport{}) {
		ur, err := dst.NewUnderReport()
		if err != nil {
			return err
		}
		ur.SetMarginBytes(p.UnderReport.MarginBytes)
		ur.SetTicks(p.UnderReport.Ticks)
	}
	if err := setVictims(dst, p.Victims); err != nil {
		return err
	}
	lv, err := dst.NewLevels()
	if err != nil {
		return err
	}
	lv.SetWarningBytes(p.Levels.WarningBytes)
	lv.SetImminentOomBytes(p.Levels.ImminentOOMBytes)
	lv.SetOomBytes(p.Levels.OOMBytes)
	lv.SetHysteresisBytes(p.Levels.HysteresisBytes)
	lv.SetIntervalMs(p.Levels.IntervalMs)
	lv.SetPsiWarning(p.Levels.PSIWarning)
	lv.SetPsiImminentOom(p.Levels.PSIImminentOOM)
	lv.SetPsiOom(p.Levels.PSIOOM)
	lv.SetPsiHysteresis(p.Levels.PSIHysteresis)
	return nil
}

func setVictims(dst oomdpb.Policy, v policy.Victims) error {
	if v.Level == policy.VictimLevelDefault && v.PreferPoints == 0 && v.AvoidPoints == 0 && v.SettleTicks == 0 &&
		!v.DryRun && len(v.Prefer) == 0 && len(v.Avoid) == 0 && len(v.Never) == 0 {
		return nil // unset: the defaults
	}
	w, err := dst.NewVictims()
	if err != nil {
		return err
	}
	w.SetLevel(oomdpb.VictimLevel(v.Level))
	w.SetPreferPoints(v.PreferPoints)
	w.SetAvoidPoints(v.AvoidPoints)
	w.SetSettleTicks(v.SettleTicks)
	w.SetDryRun(v.DryRun)
	for _, l := range []struct {
		name string
		ids  []string
		new  func(int32) (capnp.TextList, error)
	}{{"policy.victims.prefer", v.Prefer, w.NewPrefer}, {"policy.victims.avoid", v.Avoid, w.NewAvoid}, {"policy.victims.never", v.Never, w.NewNever}} {
		if err := setTextList(l.name, l.new, l.ids); err != nil {
			return err
		}
	}
	return nil
}

// victims reads the victims block, bounding each list before reading it.
func victims(src oomdpb.Policy) (policy.Victims, error) {
	w, err := src.Victims()
	if err != nil {
		return policy.Victims{}, fmt.Errorf("policy.victims: %w", err)
	}
	v := policy.Victims{
		Level:        policy.VictimLevel(w.Level()),
		PreferPoints: w.PreferPoints(),
		AvoidPoints:  w.AvoidPoints(),
		SettleTicks:  w.SettleTicks(),
		DryRun:       w.DryRun(),
	}
	for _, l := range []struct {
		name string
		get  func() (capnp.TextList, error)
		dst  *[]string
	}{{"victims.prefer", w.Prefer, &v.Prefer}, {"victims.avoid", w.Avoid, &v.Avoid}, {"victims.never", w.Never, &v.Never}} {
		tl, err := l.get()
		if err != nil {
			return v, fmt.Errorf("policy.%s: %w", l.name, err)
		}
		if tl.Len() > policy.MaxVictimList {
			return v, &policy.ValidationError{Field: l.name, Value: tl.Len(), Bound: fmt.Sprintf("at most %d entries", policy.MaxVictimList)}
		}
		for i := 0; i < tl.Len(); i++ {
			s, err := tl.At(i)
			if err != nil {
				return v, fmt.Errorf("policy.%s[%d]: %w", l.name, i, err)
			}
			*l.dst = append(*l.dst, s)
		}
	}
	return v, nil
}

// Policy reads a policy from the wire and validates it whole.
func Policy(src oomdpb.Policy) (policy.Policy, error) {
	p := policy.Policy{
		SoftBytes:       src.SoftBytes(),
		HardBytes:       src.HardBytes(),
		SampleMs:        src.SampleMs(),
		KillBudget:      src.KillBudget(),
		KillWindowTicks: src.KillWindowTicks(),
		OOMTimeoutMs:    src.OomTimeoutMs(),
	}
	crit, err := src.Critical()
	if err != nil {
		return p, fmt.Errorf("policy.critical: %w", err)
	}
	if crit.Len() > policy.MaxCritical {
		return p, &policy.ValidationError{Field: "critical", Value: crit.Len(), Bound: fmt.Sprintf("at most %d entries", policy.MaxCritical)}
	}
	for i := 0; i < crit.Len(); i++ {
		s, err := crit.At(i)
		if err != nil {
			return p, fmt.Errorf("policy.critical[%d]: %w", i, err)
		}
		p.Critical = append(p.Critical, s)
	}
	ov, err := src.Overrides()
	if err != nil {
		return p, fmt.Errorf("policy.overrides: %w", err)
	}
	if ov.Len() > policy.MaxOverrides {
		return p, &policy.ValidationError{Field: "overrides", Value: ov.Len(), Bound: fmt.Sprintf("at most %d entries", policy.MaxOverrides)}
	}
	for i := 0; i < ov.Len(); i++ {
		e := ov.At(i)
		s, err := e.Subject()
		if err != nil {
			return p, fmt.Errorf("policy.overrides[%d].subject: %w", i, err)
		}
		o := policy.SubjectLimit{Subject: s, SoftBytes: e.SoftBytes(), HardBytes: e.HardBytes()}
		if e.HasSignal() {
			sig := policy.Signal(e.Signal())
			o.Signal = &sig
		}
		if e.HasDryRun() {
			dry := e.DryRun()
			o.DryRun = &dry
		}
		p.Overrides = append(p.Overrides, o)
	}
	p.Signal = policy.Signal(src.Signal())
	p.DryRun = src.DryRun()
	if src.HasUnderReport() {
		ur, err := src.UnderReport()
		if err != nil {
			return p, fmt.Errorf("policy.underReport: %w", err)
		}
		p.UnderReport = policy.UnderReport{MarginBytes: ur.MarginBytes(), Ticks: ur.Ticks()}
	}
	if src.HasVictims() {
		v, err := victims(src)
		if err != nil {
			return p, err
		}
		p.Victims = v
	}
	if src.HasLevels() {
		lv, err := src.Levels()
		if err != nil {
			return p, fmt.Errorf("policy.levels: %w", err)
		}
		p.Levels = policy.LevelThresholds{
			WarningBytes:     lv.WarningBytes(),
			ImminentOOMBytes: lv.ImminentOomBytes(),
			OOMBytes:         lv.OomBytes(),
			HysteresisBytes:  lv.HysteresisBytes(),
			IntervalMs:       lv.IntervalMs(),
			PSIWarning:       lv.PsiWarning(),
			PSIImminentOOM:   lv.PsiImminentOom(),
			PSIOOM:           lv.PsiOom(),
			PSIHysteresis:    lv.PsiHysteresis(),
		}
	}
	return p, p.Validate()
}

// SetEvent writes e into dst.
func SetEvent(dst oomdpb.Event, e policy.Event) error {
	dst.SetSeq(e.Seq)
	dst.SetTick(e.Tick)
	dst.SetKind(oomdpb.EventKind(e.Kind))
	dst.SetBytes(e.Bytes)
	dst.SetLimit(e.Limit)
	dst.SetDecision(e.Decision)
	dst.SetWallTimeNs(e.WallTimeNs)
	if err := dst.SetSubject(e.Subject); err != nil {
		return err
	}
	return dst.SetReason(e.Reason)
}

// Event reads an event from the wire.
func Event(src oomdpb.Event) (policy.Event, error) {
	subj, err := src.Subject()
	if err != nil {
		return policy.Event{}, fmt.Errorf("event.subject: %w", err)
	}
	reason, err := src.Reason()
	if err != nil {
		return policy.Event{}, fmt.Errorf("event.reason: %w", err)
	}
	return policy.Event{
		Seq: src.Seq(), Tick: src.Tick(), Subject: subj, Kind: policy.EventKind(src.Kind()),
		Bytes: src.Bytes(), Limit: src.Limit(), Reason: reason, Decision: src.Decision(), WallTimeNs: src.WallTimeNs(),
	}, nil
}

// Events reads a list of events.
func Events(l oomdpb.Event_List) ([]policy.Event, error) {
	out := make([]policy.Event, 0, l.Len())
	for i := 0; i < l.Len(); i++ {
		e, err := Event(l.At(i))
		if err != nil {
			return nil, fmt.Errorf("events[%d]: %w", i, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// NewEventList allocates a list holding evs in seg.
func NewEventList(seg *capnp.Segment, evs []policy.Event) (oomdpb.Event_List, error) {
	l, err := oomdpb.NewEvent_List(seg, int32(len(evs)))
	if err != nil {
		return l, err
	}
	for i, e := range evs {
		if err := SetEvent(l.At(i), e); err != nil {
			return l, err
		}
	}
	return l, nil
}

// EventBatchDst is where a batch of events goes: Control.events' results and
// EventSubscriber.push's params.
type EventBatchDst interface {
	Segment() *capnp.Segment
	SetEvents(oomdpb.Event_List) error
	SetMissed(uint64)
}

// SetEventBatch writes evs, and how many events before them were missed, into dst.
func SetEventBatch(dst EventBatchDst, evs []policy.Event, missed uint64) error {
	l, err := NewEventList(dst.Segment(), evs)
	if err != nil {
		return err
	}
	dst.SetMissed(missed)
	return dst.SetEvents(l)
}

// EventBatchSrc is a batch of events read from the wire (see EventBatchDst).
type EventBatchSrc interface {
	Events() (oomdpb.Event_List, error)
	Missed() uint64
}

// ReadEventBatch reads the events of a batch and how many before them were missed.
func ReadEventBatch(src EventBatchSrc) (evs []policy.Event, missed uint64, err error) {
	l, err := src.Events()
	if err != nil {
		return nil, 0, fmt.Errorf("events: %w", err)
	}
	if evs, err = Events(l); err != nil {
		return nil, 0, err
	}
	return evs, src.Missed(), nil
}

// SetAuditRecord writes r into dst, with the writer sequence given separately (the
// daemon maps the core's sequence onto the journal's).
func SetAuditRecord(dst oomdpb.AuditRecord, r policy.AuditRecord, writerSeq, execdRun uint64) error {
	dst.SetWriterSeq(writerSeq)
	dst.SetExecdRun(execdRun)
	dst.SetTick(r.Tick)
	dst.SetKind(oomdpb.EventKind(r.Kind))
	dst.SetBytes(r.Bytes)
	dst.SetLimit(r.Limit)
	dst.SetDecision(r.Decision)
	dst.SetInstance(r.Instance)
	if err := dst.SetSubject(r.Subject); err != nil {
		return err
	}
	if r.TracePos != "" {
		if err := dst.SetTracePos(r.TracePos); err != nil {
			return err
		}
	}
	return dst.SetReason(r.Reason)
}

// AuditRecord reads an audit record from the wire.
func AuditRecord(src oomdpb.AuditRecord) (policy.AuditRecord, error) {
	subject, err := src.Subject()
	if err != nil {
		return policy.AuditRecord{}, fmt.Errorf("record.subject: %w", err)
	}
	reason, err := src.Reason()
	if err != nil {
		return policy.AuditRecord{}, fmt.Errorf("record.reason: %w", err)
	}
	pos, err := src.TracePos()
	if err != nil {
		return policy.AuditRecord{}, fmt.Errorf("record.tracePos: %w", err)
	}
	return policy.AuditRecord{
		WriterSeq: src.WriterSeq(), Tick: src.Tick(), Kind: policy.EventKind(src.Kind()), Subject: subject,
		Instance: src.Instance(), Bytes: src.Bytes(), Limit: src.Limit(), Decision: src.Decision(), Reason: reason,
		TracePos: pos,
	}, nil
}

// HandoffPreference reads the manifest's victim preference from a handoff, for
// Input.Preference of InputRegister. An old execd sends none. An enumerant this build
// does not know is an error (the versioning rule forbids reading it as any known value):
// the caller refuses the handoff or registers with PreferenceNone and logs it.
func HandoffPreference(h oomdpb.SubjectHandoff) (policy.Preference, error) {
	p := h.Preference()
	if p > oomdpb.Preference_never {
		return policy.PreferenceNone, fmt.Errorf("handoff.preference: unknown value %d (want none, prefer, avoid or never)", uint16(p))
	}
	return policy.Preference(p), nil
}

// setTextList sets a new text list holding ss (none at all when ss is empty), naming
// the field in errors.
func setTextList(name string, newList func(int32) (capnp.TextList, error), ss []string) error {
	if len(ss) == 0 {
		return nil
	}
	l, err := newList(int32(len(ss)))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for i, s := range ss {
		if err := l.Set(i, s); err != nil {
			return fmt.Errorf("%s[%d]: %w", name, i, err)
		}
	}
	return nil
}

// textList reads a text list (nil when empty), naming the field in errors.
func textList(name string, get func() (capnp.TextList, error)) ([]string, error) {
	l, err := get()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var out []string
	for i := 0; i < l.Len(); i++ {
		s, err := l.At(i)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", name, i, err)
		}
		out = append(out, s)
	}
	return out, nil
}
