package policy

import "fmt"

// This file is the core's contract with the daemon shell: what goes in (Input), what
// comes out (Ready), and the value types on both sides. Numeric values of the enums
// equal the schema's (gen/oomdpb), so the shell converts with a plain cast.

// InputKind says what an Input carries.
type InputKind uint8

const (
	// InputTick advances time by one tick and evaluates the samples coalesced since the
	// previous tick, the throttle queue and the kill budget.
	InputTick InputKind = iota + 1
	// InputPolicy replaces the policy (Policy). It must already be valid: the shell
	// calls Policy.Validate first so an invalid policy never reaches the core.
	InputPolicy
	// InputRegister: execd handed over Subject/Instance, with Critical and Preference
	// from the manifest.
	InputRegister
	// InputSample: a memstat sample that arrived on Subject/Instance's sink (the
	// authenticated identity), claiming to be Claimed, with Bytes. Count says how many
	// samples of that kind (accepted, or claiming that same Claimed) the shell
	// coalesced into this one input; 0 means 1. Bytes is always a usage in bytes.
	InputSample
	// InputAuditAck: every audit record with WriterSeq <= Seq is durable.
	InputAuditAck
	// InputTerminateAck: execd accepted the terminate request for Decision.
	InputTerminateAck
	// InputTerminateRefused: execd refused Decision; Reason carries the refusal.
	InputTerminateRefused
	// InputExited: execd observed Subject/Instance exit; Reason is "exit=<n>" or
	// "signal=<name>". Decision is the kill decision whose terminate request the exit
	// followed, as execd recorded it (0: none), which completes a decision an earlier
	// oomd run requested before it died (Config.Durable).
	InputExited
	// InputMemAvailable: the system's MemAvailable was read as Bytes. The core derives
	// the pressure level from it (Policy.Levels); reaching LevelOOM claims the halt
	// token. Ignored (apart from being remembered) while levels are off.
	InputMemAvailable
	// InputRebootRequest: a client asked for a reboot with Reason (a RebootReason name,
	// "userRequest" or "oom"). It claims the halt token or is refused and recorded.
	InputRebootRequest
	// InputTeardownDone: execd acknowledged the teardown the core's HaltRequest asked
	// for; Graceful and NotStopped are its report.
	InputTeardownDone
	// InputAuditSpilled: logd was unreachable or slower than the shell's bound, so the
	// shell made every audit record with WriterSeq <= Seq durable in its own spill file
	// instead (it replays them to logd later). Reason says why. The core emits
	// EventAuditSpilled and then treats the input as InputAuditAck{Seq}: the spill is the
	// durable audit a kill waits for.
	InputAuditSpilled
	// InputHaltTimeout: the shell's wall clock says Policy.OOMTimeoutMs passed since the
	// claim. The bound is also counted in ticks; whichever comes first ends the
	// sequence, so ticks that run late (a starved process) cannot stretch it.
	InputHaltTimeout
	// InputKernel: the shell read the kernel's count for Subject/Instance (its cgroup's
	// working set, or the /proc tree's RSS) as Bytes, this tick, before InputTick. With
	// Reason set the read failed instead (Bytes is ignored): the core reports that once
	// per episode and keeps the last good reading. Slot is a handle as for InputSample.
	InputKernel
	// InputMemstatInvalid: the subject's memstat page could not be read this tick for
	// Reason ("bad magic", "bad version", "torn"): the shell skipped it. The core
	// reports it once per episode; the next accepted sample ends the episode.
	InputMemstatInvalid
	// InputPressure: the kernel's memory pressure was read as Pressure (PSI "full
	// avg10", hundredths of a percent, 0..10000). With Policy.Levels' PSI thresholds set,
	// it drives the pressure level beside MemAvailable (the deeper of the two wins).
	InputPressure
)

var inputKindNames = [...]string{
	InputTick:             "tick",
	InputPolicy:           "policy",
	InputRegister:         "register",
	InputSample:           "sample",
	InputAuditAck:         "audit-ack",
	InputTerminateAck:     "terminate-ack",
	InputTerminateRefused: "terminate-refused",
	InputExited:           "exited",
	InputMemAvailable:     "mem-available",
	InputRebootRequest:    "reboot-request",
	InputTeardownDone:     "teardown-done",
	InputAuditSpilled:     "audit-spilled",
	InputHaltTimeout:      "halt-timeout",
	InputKernel:           "kernel",
	InputMemstatInvalid:   "memstat-invalid",
	InputPressure:         "pressure",
}

func (k InputKind) String() string {
	if int(k) < len(inputKindNames) && inputKindNames[k] != "" {
		return inputKindNames[k]
	}
	return "unknown"
}

// MarshalText writes the kind by name, so traces stay readable and do not depend on
// the numbering.
func (k InputKind) MarshalText() ([]byte, error) {
	if k.String() == "unknown" {
		return nil, fmt.Errorf("unknown input kind %d", uint8(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (k *InputKind) UnmarshalText(b []byte) error {
	for i, name := range inputKindNames {
		if name != "" && name == string(b) {
			*k = InputKind(i)
			return nil
		}
	}
	return fmt.Errorf("unknown input kind %q", b)
}

// Input is one step of the core. Only the fields its Kind names are meaningful; the
// rest are zero. Inputs are plain values so a sequence of them is a replayable trace.
type Input struct {
	Kind     InputKind `json:"kind"`
	Subject  string    `json:"subject,omitempty"`
	Instance uint64    `json:"instance,omitempty"`
	Claimed  string    `json:"claimed,omitempty"`
	Bytes    uint64    `json:"bytes,omitempty"`
	Critical bool      `json:"critical,omitempty"`
	// Preference is the manifest's victim preference (InputRegister); the policy's
	// victims lists override it, except that never from either side holds.
	Preference Preference `json:"preference,omitempty"`
	Seq        uint64     `json:"seq,omitempty"`
	Decision   uint64     `json:"decision,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	Policy     *Policy    `json:"policy,omitempty"`
	Count      uint64     `json:"count,omitempty"`
	// Pressure is InputPressure's reading (hundredths of a percent).
	Pressure uint32 `json:"pressure,omitempty"`
	// Slot is an optional handle for Subject on InputSample, as Core.SlotOf returned it
	// after registration; the shell passes it so a sample skips the id lookup. The core
	// uses it only if that slot is live and holds Subject, and looks the id up otherwise,
	// so a wrong or stale handle can never attribute a sample to another subject.
	Slot uint32 `json:"slot,omitempty"`
	// Graceful and NotStopped carry execd's teardown report (InputTeardownDone).
	Graceful   bool     `json:"graceful,omitempty"`
	NotStopped []string `json:"notStopped,omitempty"`
}

// EventKind mirrors oomdpb.EventKind value for value.
type EventKind uint16

const (
	EventSubjectRegistered EventKind = iota
	EventSubjectExited
	EventSoftExceeded
	EventSoftCleared
	EventKillDecided
	EventKillRequested
	EventKillThrottled
	EventKilled
	EventKillDenied
	EventKillRefused
	EventMemstatRejected
	EventPolicyChanged
	EventLevelChanged
	EventHaltClaimed
	EventHaltRefused
	EventRebootAcked
	EventRebootTimedOut
	EventAuditSpilled
	EventMemstatUnderReported
	EventKernelReadFailed
	EventMemstatInvalid
	// EventVictimWouldKill: victims.dryRun is on and the core would pick Subject now;
	// Reason is the reason a decision would carry. Once per subject instance per episode.
	EventVictimWouldKill
	// EventWouldKill: under a dry run (Policy.DryRun or the subject's override) the
	// subject crossed its hard limit; audited like a decision would be, but no decision
	// is made and nothing is terminated. Once per crossing. A decision already made when
	// a dry run starts ends with this event too (Decision set).
	EventWouldKill
)

var eventKindNames = [...]string{
	EventSubjectRegistered: "subjectRegistered",
	EventSubjectExited:     "subjectExited",
	EventSoftExceeded:      "softExceeded",
	EventSoftCleared:       "softCleared",
	EventKillDecided:       "killDecided",
	EventKillRequested:     "killRequested",
	EventKillThrottled:     "killThrottled",
	EventKilled:            "killed",
	EventKillDenied:        "killDenied",
	EventKillRefused:       "killRefused",
	EventMemstatRejected:   "memstatRejected",
	EventPolicyChanged:     "policyChanged",
	EventLevelChanged:      "levelChanged",
	EventHaltClaimed:       "haltClaimed",
	EventHaltRefused:       "haltRefused",
	EventRebootAcked:       "rebootAcked",
	EventRebootTimedOut:    "rebootTimedOut",
	EventAuditSpilled:      "auditSpilled",

	EventMemstatUnderReported: "memstatUnderReported",
	EventKernelReadFailed:     "kernelReadFailed",
	EventMemstatInvalid:       "memstatInvalid",
	EventVictimWouldKill:      "victimWouldKill",
	EventWouldKill:            "wouldKill",
}

func (k EventKind) String() string {
	if int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return "unknown"
}

// Event is one entry of the event ring. It carries a sequence number and a tick, never
// a wall-clock time.
type Event struct {
	Seq      uint64
	Tick     uint64
	Subject  string
	Kind     EventKind
	Bytes    uint64
	Limit    uint64
	Reason   string
	Decision uint64
	// WallTimeNs is when the shell published the event (Unix ns), for people. The core
	// never sets or reads it (it reads no clock): it is 0 in everything the core emits,
	// and the shell fills it in on the copies it hands out.
	WallTimeNs int64
}

// AuditRecord is what the shell must make durable (logd, or the spill file) before the
// decision it describes may proceed. WriterSeq is gap-free from 1.
type AuditRecord struct {
	WriterSeq uint64
	Tick      uint64
	Kind      EventKind
	Subject   string
	Instance  uint64
	Bytes     uint64
	Limit     uint64
	Decision  uint64
	Reason    string
	// TracePos is set by the shell, never by the core: where the inputs that led to
	// this record end in oomd's live trace ("<file>:<offset>", services/oomd/tracelog).
	TracePos string
}

// TerminateRequest asks execd to stop one subject instance. The core releases one only
// after the audit record of the same Decision was acknowledged, only for a non-critical
// subject, and only within the kill budget.
type TerminateRequest struct {
	Decision uint64
	Subject  string
	Instance uint64
	Bytes    uint64
	Limit    uint64
	Reason   string
}

// HaltRequest starts the system OOM (or requested reboot) sequence. The core hands it
// out once per core lifetime, only after the haltClaimed audit record is durable. The
// shell marks the persistent record "in progress", asks execd to tear the system down
// with Reason, and steps InputTeardownDone with execd's report when it returns. The core
// runs the bound itself (in ticks, from the claim): the shell does not wait for it.
type HaltRequest struct {
	Reason       string // RebootReason name: "oom" or "userRequest"
	Tick         uint64 // the tick the token was claimed at
	TimeoutTicks uint64 // the bound, counted from Tick
}

// HaltTimer is the bound on the shell's wall clock: the core hands it out when the halt
// token is claimed, the moment its own bound (counted in ticks) starts. The shell starts
// a timer of Ms and steps InputHaltTimeout when it fires, so a tick loop that falls
// behind cannot stretch the bound; it stops the timer when the RebootOutcome comes out.
type HaltTimer struct {
	Ms uint64
}

// RebootOutcome ends the sequence: exactly one per claimed token, either when execd
// acknowledged (TimedOut false) or when the bound passed first (TimedOut true). The
// shell persists it as the reboot record and then runs the reboot action.
type RebootOutcome struct {
	Reason     string
	Graceful   bool     // execd said every service stopped in time (never when TimedOut)
	TimedOut   bool     // the bound passed before execd's acknowledgement
	NotStopped []string // services not reported stopped, sorted (TimedOut) or in execd's order
	Ticks      uint64   // ticks from the claim to the outcome
}

// Ready is what the shell must do, in this order:
//  1. append every Audit record and wait until it is durable, then Step(InputAuditAck);
//  2. send every Terminate request (their audit records were acknowledged earlier);
//  3. start every HaltTimer, and the Halt sequence (its haltClaimed record was
//     acknowledged earlier);
//  4. persist the Reboot outcome, then run the reboot action (its audit record is in
//     Audit: wait a bounded time for it, never unboundedly, the reboot must happen);
//  5. publish Events (ring readers, subscribers, markers, logs).
//
// Then call Advance. The slices are only valid until Advance.
type Ready struct {
	Audit     []AuditRecord
	Terminate []TerminateRequest
	HaltTimer []HaltTimer
	Halt      []HaltRequest
	Reboot    []RebootOutcome
	Events    []Event
}

// SubjectState is where a subject is in its lifetime; values mirror oomdpb.SubjectState.
type SubjectState uint8

const (
	StateNormal SubjectState = iota
	StateSoft
	StateHard
	StateTerminating
	StateExited
)

var stateNames = [...]string{"normal", "soft", "hard", "terminating", "exited"}

func (s SubjectState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// SubjectStatus is a read-only snapshot of one subject, for status queries.
type SubjectStatus struct {
	Subject   string
	Instance  uint64
	Bytes     uint64 // the enforced reading (see Signal)
	SoftBytes uint64
	HardBytes uint64
	State     SubjectState
	Critical  bool
	Rejected  uint64

	Kernel      uint64 // the kernel's count at the last evaluation (HasKernel)
	Cooperative uint64 // the latest published value (Published)
	HasKernel   bool
	Published   bool
	Signal      Signal     // which reading the limits apply to
	Preference  Preference // effective victim preference (registration and policy)
}

// Counters are monotonic totals since the core was created.
//
// Kills counts killed events (terminate acknowledged and exit observed), Denied
// killDenied, Throttled killThrottled (once per decision), Rejected every sample that
// claimed another subject (events for them are rate-limited, this count is not),
// Accepted every sample taken into account, and Dropped the samples of unknown
// subjects or stale instances.
type Counters struct {
	Kills, Denied, Throttled, Rejected, Accepted uint64
	Dropped                                      uint64
}
