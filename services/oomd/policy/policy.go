package policy

import (
	"fmt"
	"slices"

	"oomd.dev/oomd/gen/bounds"
	"oomd.dev/oomd/internal/subjectid"
)

// Bounds of a valid policy. They are part of the documented contract (schema comments
// and docs/reliability/oom-policy.md); change them together.
const (
	MinSampleMs       = 10
	MaxSampleMs       = 60_000
	MaxHardBytes      = 1 << 50
	MaxKillBudget     = 1024
	MaxKillWindow     = 1_000_000
	MaxCritical       = bounds.MaxCritical
	MaxOverrides      = bounds.MaxOverrides
	MaxSubjectIDBytes = subjectid.MaxBytes
	DefaultOOMTimeout = 30_000
	MinOOMTimeoutMs   = 1_000
	MaxOOMTimeoutMs   = 600_000
	MinLevelInterval  = 10
	MaxLevelInterval  = 10_000

	DefaultUnderReportMargin = 64 << 20
	DefaultUnderReportTicks  = 3
	MinUnderReportMargin     = 1 << 20
	MaxUnderReportTicks      = 10_000

	DefaultVictimPoints      = 500
	MaxVictimPoints          = 100_000
	DefaultVictimSettleTicks = 10
	MaxVictimSettleTicks     = 1_000_000
	MaxVictimList            = bounds.MaxVictimList
)

// DefaultCritical are always critical, whatever a policy says: a policy's list adds to
// them and can never remove one, so no policy change can expose the core services.
var DefaultCritical = []string{"init", "execd", "samgrd", "policyd", "logd", "oomd"}

// Policy is the whole configuration of the core. It is replaced whole, never patched.
type Policy struct {
	SoftBytes       uint64          `json:"softBytes"`
	HardBytes       uint64          `json:"hardBytes"`
	SampleMs        uint32          `json:"sampleMs"`
	KillBudget      uint32          `json:"killBudget"`
	KillWindowTicks uint32          `json:"killWindowTicks"`
	Critical        []string        `json:"critical,omitempty"`
	Overrides       []SubjectLimit  `json:"overrides,omitempty"`
	Levels          LevelThresholds `json:"levels"`
	OOMTimeoutMs    uint32          `json:"oomTimeoutMs,omitempty"`
	// Signal is the reading the limits apply to for subjects whose override does not
	// say; the zero value is SignalMax.
	Signal      Signal      `json:"signal,omitempty"`
	UnderReport UnderReport `json:"underReport,omitzero"`
	// Victims configures victim selection under system pressure (victims.go). The zero
	// value means the defaults: pick at imminentOom, prefer/avoid 500 points, settle 10
	// ticks, no per-subject preferences.
	Victims Victims `json:"victims,omitzero"`
	// DryRun: hard-limit crossings are reported (wouldKill, audited, once per crossing)
	// and nobody is terminated: no kill decision is made, and under pressure victims
	// are only named (victimWouldKill). An override's DryRun wins for its subject.
	DryRun bool `json:"dryRun,omitempty"`
}

// SubjectLimit replaces the global soft/hard limits (and, when Signal is set, the
// signal) for one subject.
type SubjectLimit struct {
	Subject   string  `json:"subject"`
	SoftBytes uint64  `json:"softBytes"`
	HardBytes uint64  `json:"hardBytes"`
	Signal    *Signal `json:"signal,omitempty"`
	// DryRun, when set, replaces Policy.DryRun for this subject: true watches it
	// without ever terminating it (and keeps it out of victim selection), false
	// enforces it under a global dry run.
	DryRun *bool `json:"dryRun,omitempty"`
}

// Signal says which reading a subject's limits apply to. Values equal oomdpb.Signal's.
type Signal uint8

const (
	// SignalMax enforces the larger of the kernel's count and the cooperative value; a
	// subject that never published is enforced on the kernel's count alone.
	SignalMax Signal = iota
	// SignalKernel enforces the kernel's count (the cgroup's working set, or the /proc
	// tree's RSS); without a kernel reading it falls back to the cooperative value.
	SignalKernel
	// SignalCooperative enforces what the subject publishes (what the subject says it holds).
	SignalCooperative
)

var signalNames = [...]string{"max", "kernel", "cooperative"}

func (s Signal) String() string {
	if int(s) < len(signalNames) {
		return signalNames[s]
	}
	return "unknown"
}

// MarshalText writes the signal by name.
func (s Signal) MarshalText() ([]byte, error) {
	if int(s) >= len(signalNames) {
		return nil, fmt.Errorf("unknown signal %d", uint8(s))
	}
	return []byte(signalNames[s]), nil
}

// UnmarshalText accepts max, kernel or cooperative.
func (s *Signal) UnmarshalText(b []byte) error {
	for i, n := range signalNames {
		if n == string(b) {
			*s = Signal(i)
			return nil
		}
	}
	return fmt.Errorf("signal %q: want max, kernel or cooperative", b)
}

// UnderReport configures memstatUnderReported. Zero fields mean the defaults.
type UnderReport struct {
	MarginBytes uint64 `json:"marginBytes,omitempty"`
	Ticks       uint32 `json:"ticks,omitempty"`
}

// Margin is MarginBytes or its default.
func (u UnderReport) Margin() uint64 {
	if u.MarginBytes == 0 {
		return DefaultUnderReportMargin
	}
	return u.MarginBytes
}

// TickCount is Ticks or its default.
func (u UnderReport) TickCount() uint64 {
	if u.Ticks == 0 {
		return DefaultUnderReportTicks
	}
	return uint64(u.Ticks)
}

// Victims configures victim selection: at or above Level (while level monitoring is on)
// the core kills one non-critical subject at a time, chosen by its score (victims.go,
// docs/reliability/oom-policy.md). Zero fields mean the defaults.
type Victims struct {
	// Level is the pressure level at which victims are picked: "" (= imminentOom),
	// "off", "warning" or "imminentOom".
	Level VictimLevel `json:"level,omitempty"`
	// PreferPoints are added to a preferred subject's score, AvoidPoints taken from an
	// avoided one's (saturating at 0); the score is per mille of the subject's own hard
	// limit, so 1000 points weigh as much as a whole hard limit. 0 = 500.
	PreferPoints uint32 `json:"preferPoints,omitempty"`
	AvoidPoints  uint32 `json:"avoidPoints,omitempty"`
	// SettleTicks is how long after a victim's decision ended (its kill observed, or
	// refused, or cancelled) the next victim waits, so the memory it freed shows in
	// MemAvailable first. 0 = DefaultVictimSettleTicks.
	SettleTicks uint32 `json:"settleTicks,omitempty"`
	// DryRun: pick and report (victimWouldKill) but decide nothing.
	DryRun bool `json:"dryRun,omitempty"`
	// Prefer, Avoid and Never set the preference of subjects by id, over the one their
	// registration gave (except that never, from either side, always holds). A subject
	// may be in one list only.
	Prefer []string `json:"prefer,omitempty"`
	Avoid  []string `json:"avoid,omitempty"`
	Never  []string `json:"never,omitempty"`
}

// VictimLevel is Victims.Level. Values equal oomdpb.VictimLevel's.
type VictimLevel uint8

const (
	VictimLevelDefault  VictimLevel = iota // imminentOom
	VictimLevelOff                         // never pick a victim
	VictimLevelWarning                     // pick from warning on
	VictimLevelImminent                    // pick from imminentOom on
)

var victimLevelNames = [...]string{"", "off", "warning", "imminentOom"}

func (l VictimLevel) String() string {
	if l == VictimLevelDefault {
		return "default"
	}
	if int(l) < len(victimLevelNames) {
		return victimLevelNames[l]
	}
	return "unknown"
}

// MarshalText writes the level by name ("" for the default).
func (l VictimLevel) MarshalText() ([]byte, error) {
	if int(l) >= len(victimLevelNames) {
		return nil, fmt.Errorf("unknown victim level %d", uint8(l))
	}
	return []byte(victimLevelNames[l]), nil
}

// UnmarshalText accepts "", off, warning or imminentOom.
func (l *VictimLevel) UnmarshalText(b []byte) error {
	for i, n := range victimLevelNames {
		if n == string(b) {
			*l = VictimLevel(i)
			return nil
		}
	}
	return fmt.Errorf("victim level %q: want off, warning or imminentOom", b)
}

// At is the pressure level victims are picked at; ok is false when they are off.
func (v Victims) At() (l Level, ok bool) {
	switch v.Level {
	case VictimLevelOff:
		return LevelNormal, false
	case VictimLevelWarning:
		return LevelWarning, true
	}
	return LevelImminentOOM, true
}

// PreferBy is PreferPoints or its default.
func (v Victims) PreferBy() uint64 { return orDefault(v.PreferPoints, DefaultVictimPoints) }

// AvoidBy is AvoidPoints or its default.
func (v Victims) AvoidBy() uint64 { return orDefault(v.AvoidPoints, DefaultVictimPoints) }

// Settle is SettleTicks or its default.
func (v Victims) Settle() uint64 { return orDefault(v.SettleTicks, DefaultVictimSettleTicks) }

func orDefault(v uint32, def uint64) uint64 {
	if v == 0 {
		return def
	}
	return uint64(v)
}

// Preference is a subject's standing in victim selection. Values equal
// oomdpb.Preference's.
type Preference uint8

const (
	PreferenceNone   Preference = iota // scored on its usage alone
	PreferencePrefer                   // Victims.PreferPoints added to its score
	PreferenceAvoid                    // Victims.AvoidPoints taken from its score
	PreferenceNever                    // never a victim (its own hard limit still applies)
)

var preferenceNames = [...]string{"none", "prefer", "avoid", "never"}

func (p Preference) String() string {
	if int(p) < len(preferenceNames) {
		return preferenceNames[p]
	}
	return "unknown"
}

// MarshalText writes the preference by name.
func (p Preference) MarshalText() ([]byte, error) {
	if int(p) >= len(preferenceNames) {
		return nil, fmt.Errorf("unknown preference %d", uint8(p))
	}
	return []byte(preferenceNames[p]), nil
}

// UnmarshalText accepts none, prefer, avoid or never.
func (p *Preference) UnmarshalText(b []byte) error {
	for i, n := range preferenceNames {
		if n == string(b) {
			*p = Preference(i)
			return nil
		}
	}
	return fmt.Errorf("preference %q: want none, prefer, avoid or never", b)
}

// LevelThresholds configure system memory-pressure levels from MemAvailable. All zero
// means level monitoring is off.
type LevelThresholds struct {
	WarningBytes     uint64 `json:"warningBytes,omitempty"`
	ImminentOOMBytes uint64 `json:"imminentOomBytes,omitempty"`
	OOMBytes         uint64 `json:"oomBytes,omitempty"`
	HysteresisBytes  uint64 `json:"hysteresisBytes,omitempty"`
	IntervalMs       uint32 `json:"intervalMs,omitempty"`
	// PSI thresholds: the kernel's memory pressure (/proc/pressure/memory, "full
	// avg10": the share of the last 10 s in which every non-idle task was stalled on
	// memory), in hundredths of a percent. A level is entered when the reading is at or
	// above its threshold and left when it falls below the threshold minus
	// PSIHysteresis. All zero: PSI is not used. The level in force is the deeper of the
	// MemAvailable level and the PSI level.
	PSIWarning     uint32 `json:"psiWarning,omitempty"`
	PSIImminentOOM uint32 `json:"psiImminentOom,omitempty"`
	PSIOOM         uint32 `json:"psiOom,omitempty"`
	PSIHysteresis  uint32 `json:"psiHysteresis,omitempty"`
}

// MaxPSI is 100 % in PSI's hundredths of a percent.
const MaxPSI = 10_000

// PSIEnabled reports whether PSI thresholds are set.
func (l LevelThresholds) PSIEnabled() bool {
	return l.PSIWarning != 0 || l.PSIImminentOOM != 0 || l.PSIOOM != 0 || l.PSIHysteresis != 0
}

// Enabled reports whether level monitoring is configured.
func (l LevelThresholds) Enabled() bool { return l != LevelThresholds{} }

// DefaultPolicy is what oomd enforces until told otherwise.
func DefaultPolicy() Policy {
	return Policy{
		SoftBytes:       256 << 20,
		HardBytes:       512 << 20,
		SampleMs:        100,
		KillBudget:      2,
		KillWindowTicks: 50,
	}
}

// ValidationError names the field of a rejected policy and the bound it broke.
type ValidationError struct {
	Field string
	Value any
	Bound string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid policy: %s = %v: must be %s", e.Field, e.Value, e.Bound)
}

func bad(field string, v any, bound string) error {
	return &ValidationError{Field: field, Value: v, Bound: bound}
}

// Validate checks every field against its bound and returns the first violation, in
// field order, so the same policy always gets the same error.
func (p Policy) Validate() error {
	if err := validLimits("softBytes", "hardBytes", p.SoftBytes, p.HardBytes); err != nil {
		return err
	}
	if p.SampleMs < MinSampleMs || p.SampleMs > MaxSampleMs {
		return bad("sampleMs", p.SampleMs, fmt.Sprintf("in %d..%d", MinSampleMs, MaxSampleMs))
	}
	if p.KillBudget < 1 || p.KillBudget > MaxKillBudget {
		return bad("killBudget", p.KillBudget, fmt.Sprintf("in 1..%d", MaxKillBudget))
	}
	if p.KillWindowTicks < 1 || p.KillWindowTicks > MaxKillWindow {
		return bad("killWindowTicks", p.KillWindowTicks, fmt.Sprintf("in 1..%d", MaxKillWindow))
	}
	if len(p.Critical) > MaxCritical {
		return bad("critical", len(p.Critical), fmt.Sprintf("at most %d entries", MaxCritical))
	}
	for i, s := range p.Critical {
		if err := ValidateSubjectID(s); err != nil {
			return bad(fmt.Sprintf("critical[%d]", i), fmt.Sprintf("%q", s), err.Error())
		}
	}
	if len(p.Overrides) > MaxOverrides {
		return bad("overrides", len(p.Overrides), fmt.Sprintf("at most %d entries", MaxOverrides))
	}
	seen := make(map[string]bool, len(p.Overrides))
	for i, o := range p.Overrides {
		f := fmt.Sprintf("overrides[%d]", i)
		if err := ValidateSubjectID(o.Subject); err != nil {
			return bad(f+".subject", fmt.Sprintf("%q", o.Subject), err.Error())
		}
		if seen[o.Subject] {
			return bad(f+".subject", fmt.Sprintf("%q", o.Subject), "unique (it appears twice)")
		}
		seen[o.Subject] = true
		if err := validLimits(f+".softBytes", f+".hardBytes", o.SoftBytes, o.HardBytes); err != nil {
			return err
		}
		if o.Signal != nil && *o.Signal > SignalCooperative {
			return bad(f+".signal", uint8(*o.Signal), "max, kernel or cooperative")
		}
	}
	if p.Signal > SignalCooperative {
		return bad("signal", uint8(p.Signal), "max, kernel or cooperative")
	}
	if m := p.UnderReport.MarginBytes; m != 0 && (m < MinUnderReportMargin || m > MaxHardBytes) {
		return bad("underReport.marginBytes", m, fmt.Sprintf("0 (default %d) or in %d..%d", DefaultUnderReportMargin, MinUnderReportMargin, uint64(MaxHardBytes)))
	}
	if n := p.UnderReport.Ticks; n > MaxUnderReportTicks {
		return bad("underReport.ticks", n, fmt.Sprintf("0 (default %d) or in 1..%d", DefaultUnderReportTicks, MaxUnderReportTicks))
	}
	if err := p.Levels.validate(); err != nil {
		return err
	}
	if p.OOMTimeoutMs != 0 && (p.OOMTimeoutMs < MinOOMTimeoutMs || p.OOMTimeoutMs > MaxOOMTimeoutMs) {
		return bad("oomTimeoutMs", p.OOMTimeoutMs, fmt.Sprintf("0 (default %d) or in %d..%d", DefaultOOMTimeout, MinOOMTimeoutMs, MaxOOMTimeoutMs))
	}
	return p.Victims.validate()
}

func (v Victims) validate() error {
	if v.Level > VictimLevelImminent {
		return bad("victims.level", uint8(v.Level), "off, warning or imminentOom (unset = imminentOom)")
	}
	if n := v.PreferPoints; n > MaxVictimPoints {
		return bad("victims.preferPoints", n, fmt.Sprintf("0 (default %d) or in 1..%d", DefaultVictimPoints, MaxVictimPoints))
	}
	if n := v.AvoidPoints; n > MaxVictimPoints {
		return bad("victims.avoidPoints", n, fmt.Sprintf("0 (default %d) or in 1..%d", DefaultVictimPoints, MaxVictimPoints))
	}
	if n := v.SettleTicks; n > MaxVictimSettleTicks {
		return bad("victims.settleTicks", n, fmt.Sprintf("0 (default %d) or in 1..%d", DefaultVictimSettleTicks, MaxVictimSettleTicks))
	}
	seen := map[string]string{}
	for _, l := range []struct {
		name string
		ids  []string
	}{{"victims.prefer", v.Prefer}, {"victims.avoid", v.Avoid}, {"victims.never", v.Never}} {
		if len(l.ids) > MaxVictimList {
			return bad(l.name, len(l.ids), fmt.Sprintf("at most %d entries", MaxVictimList))
		}
		for i, id := range l.ids {
			f := fmt.Sprintf("%s[%d]", l.name, i)
			if err := ValidateSubjectID(id); err != nil {
				return bad(f, fmt.Sprintf("%q", id), err.Error())
			}
			if prev, ok := seen[id]; ok {
				return bad(f, fmt.Sprintf("%q", id), "in one preference list only (it is also "+prev+")")
			}
			seen[id] = f
		}
	}
	return nil
}

func validLimits(softField, hardField string, soft, hard uint64) error {
	if soft == 0 {
		return bad(softField, soft, "> 0")
	}
	if hard < soft {
		return bad(hardField, hard, fmt.Sprintf(">= %s (%d)", softField, soft))
	}
	if hard > MaxHardBytes {
		return bad(hardField, hard, fmt.Sprintf("<= %d (1 PiB)", uint64(MaxHardBytes)))
	}
	return nil
}

func (l LevelThresholds) validate() error {
	if !l.Enabled() {
		return nil
	}
	if l.OOMBytes == 0 {
		return bad("levels.oomBytes", l.OOMBytes, "> 0 when levels are set")
	}
	if l.ImminentOOMBytes <= l.OOMBytes {
		return bad("levels.imminentOomBytes", l.ImminentOOMBytes, fmt.Sprintf("> levels.oomBytes (%d)", l.OOMBytes))
	}
	if l.WarningBytes <= l.ImminentOOMBytes {
		return bad("levels.warningBytes", l.WarningBytes, fmt.Sprintf("> levels.imminentOomBytes (%d)", l.ImminentOOMBytes))
	}
	if l.HysteresisBytes > l.WarningBytes-l.OOMBytes {
		return bad("levels.hysteresisBytes", l.HysteresisBytes, fmt.Sprintf("<= levels.warningBytes - levels.oomBytes (%d)", l.WarningBytes-l.OOMBytes))
	}
	if l.IntervalMs != 0 && (l.IntervalMs < MinLevelInterval || l.IntervalMs > MaxLevelInterval) {
		return bad("levels.intervalMs", l.IntervalMs, fmt.Sprintf("0 (= sampleMs) or in %d..%d", MinLevelInterval, MaxLevelInterval))
	}
	if !l.PSIEnabled() {
		return nil
	}
	if l.PSIWarning == 0 {
		return bad("levels.psiWarning", l.PSIWarning, "> 0 when PSI thresholds are set")
	}
	if l.PSIImminentOOM <= l.PSIWarning {
		return bad("levels.psiImminentOom", l.PSIImminentOOM, fmt.Sprintf("> levels.psiWarning (%d)", l.PSIWarning))
	}
	if l.PSIOOM <= l.PSIImminentOOM || l.PSIOOM > MaxPSI {
		return bad("levels.psiOom", l.PSIOOM, fmt.Sprintf("> levels.psiImminentOom (%d) and <= %d (100 %%)", l.PSIImminentOOM, MaxPSI))
	}
	if l.PSIHysteresis >= l.PSIWarning {
		return bad("levels.psiHysteresis", l.PSIHysteresis, fmt.Sprintf("< levels.psiWarning (%d)", l.PSIWarning))
	}
	return nil
}

// ValidateSubjectID checks the subject id format shared by execd, oomd and logd
// (subjectid.Validate): the core rejects any input naming a subject that fails it.
func ValidateSubjectID(s string) error { return subjectid.Validate(s) }

// EffectiveCritical returns the critical set in force, sorted and without duplicates:
// DefaultCritical plus the policy's own list.
func (p Policy) EffectiveCritical() []string {
	out := append(slices.Clone(DefaultCritical), p.Critical...)
	slices.Sort(out)
	return slices.Compact(out)
}
