package policy

import (
	"testing"
)

// fuzzPolicies are the policies a fuzzed sequence can switch between: tight budgets and
// windows so throttling happens, one that makes "hog" critical and one that is invalid.
var fuzzPolicies = []Policy{
	{SoftBytes: 100, HardBytes: 200, SampleMs: 100, KillBudget: 1, KillWindowTicks: 3, Levels: fuzzLevels, OOMTimeoutMs: 1000,
		Victims: Victims{SettleTicks: 2, Prefer: []string{"app"}, Never: []string{"svc"}}},
	{SoftBytes: 100, HardBytes: 200, SampleMs: 100, KillBudget: 2, KillWindowTicks: 5, Critical: []string{"hog"}},
	{SoftBytes: 50, HardBytes: 150, SampleMs: 100, KillBudget: 3, KillWindowTicks: 1, Overrides: []SubjectLimit{{Subject: "app", SoftBytes: 300, HardBytes: 400}},
		Levels:  LevelThresholds{WarningBytes: 500, ImminentOOMBytes: 400, OOMBytes: 100, HysteresisBytes: 0},
		Victims: Victims{Level: VictimLevelWarning, DryRun: true, Avoid: []string{"hog"}}},
	{SoftBytes: 100, HardBytes: 400, SampleMs: 100, KillBudget: 2, KillWindowTicks: 2, Levels: fuzzLevels, OOMTimeoutMs: 1000,
		Victims: Victims{Level: VictimLevelWarning, SettleTicks: 1, PreferPoints: 2000, Prefer: []string{"hog"}}},
	{SoftBytes: 300, HardBytes: 100, SampleMs: 100, KillBudget: 1, KillWindowTicks: 1}, // invalid
	{SoftBytes: 100, HardBytes: 200, SampleMs: 100, KillBudget: 2, KillWindowTicks: 5, Signal: SignalKernel,
		Overrides: []SubjectLimit{{Subject: "app", SoftBytes: 100, HardBytes: 200, Signal: &fuzzCoop}}},
}

var fuzzCoop = SignalCooperative

// fuzzLevels: fuzzBytes values sit on and around each threshold and hysteresis bound.
var fuzzLevels = LevelThresholds{WarningBytes: 400, ImminentOOMBytes: 200, OOMBytes: 100, HysteresisBytes: 50,
	PSIWarning: 1000, PSIImminentOOM: 3000, PSIOOM: 6000, PSIHysteresis: 500}

var fuzzSubjects = []string{"hog", "app", "samgrd", "svc", "init", "Bad", ""}

var fuzzBytes = []uint64{0, 49, 99, 100, 101, 150, 199, 200, 201, 400, 401, 1 << 40}

// fuzzInputs turns bytes into an input sequence, three bytes per input. Acks and
// answers are aimed near what the core produced so far (lastWriter, lastDecision), so
// the fuzzer reaches the interesting states instead of mostly producing errors.
type fuzzGen struct {
	data []byte
	chk  *checker
}

func (g *fuzzGen) next() (Input, bool) {
	if len(g.data) < 3 {
		return Input{}, false
	}
	op, a, b := g.data[0], g.data[1], g.data[2]
	g.data = g.data[3:]
	subject := fuzzSubjects[int(a)%len(fuzzSubjects)]
	instance := uint64(1 + (a>>4)%2)
	switch op % 14 {
	case 0, 1:
		return Input{Kind: InputTick}, true
	case 2:
		// Preference 4 is out of range: an error.
		return Input{Kind: InputRegister, Subject: subject, Instance: instance, Critical: b&1 == 1, Preference: Preference((b >> 1) % 5)}, true
	case 3, 4:
		if op%14 == 4 && b&0x40 != 0 {
			in := Input{Kind: InputKernel, Subject: subject, Instance: instance, Bytes: fuzzBytes[int(b)%len(fuzzBytes)], Slot: uint32(op/14) % 6}
			if b&0x20 != 0 {
				in.Reason = "pread: ENODEV"
			}
			return in, true
		}
		claimed := subject
		if b&0x80 != 0 {
			claimed = fuzzSubjects[int(b>>4)%len(fuzzSubjects)]
		}
		// Slot: none, the right handle, another subject's, or a freed slot's.
		return Input{Kind: InputSample, Subject: subject, Instance: instance, Claimed: claimed, Bytes: fuzzBytes[int(b)%len(fuzzBytes)], Count: uint64(a >> 6), Slot: uint32(op/14) % 6}, true
	case 5:
		seq := g.chk.lastWriter
		seq = seq - min(seq, uint64(b%4)) + uint64(b>>7) // sometimes one beyond: an error
		if b&0x40 != 0 {
			return Input{Kind: InputAuditSpilled, Seq: seq, Reason: "logd sync timeout"}, true
		}
		return Input{Kind: InputAuditAck, Seq: seq}, true
	case 6:
		return Input{Kind: InputTerminateAck, Decision: g.lastDecision() - min(g.lastDecision(), uint64(b%3)) + uint64(b>>7)}, true
	case 7:
		return Input{Kind: InputTerminateRefused, Decision: g.lastDecision() - min(g.lastDecision(), uint64(b%3)), Reason: "notRunning"}, true
	case 8:
		return Input{Kind: InputExited, Subject: subject, Instance: instance, Reason: "exit=0"}, true
	case 10:
		if a&0x80 != 0 {
			return Input{Kind: InputPressure, Pressure: []uint32{0, 999, 1000, 2999, 3000, 5999, 6000, 10000, 10001}[int(b)%9]}, true
		}
		return Input{Kind: InputMemAvailable, Bytes: fuzzBytes[int(b)%len(fuzzBytes)]}, true
	case 11:
		reason := []string{RebootUserRequest, RebootOOM, "bogus"}[int(b)%3]
		return Input{Kind: InputRebootRequest, Reason: reason}, true
	case 12:
		var notStopped []string
		if b&1 == 1 {
			notStopped = []string{subject}
		}
		return Input{Kind: InputTeardownDone, Graceful: b&2 == 2, NotStopped: notStopped}, true
	case 13:
		return Input{Kind: InputHaltTimeout}, true
	default:
		if b == 0xff {
			return Input{Kind: InputKind(op)}, true // unknown kind: must be an error
		}
		p := fuzzPolicies[int(b)%len(fuzzPolicies)]
		return Input{Kind: InputPolicy, Policy: &p}, true
	}
}

func (g *fuzzGen) lastDecision() uint64 {
	var last uint64
	for d := range g.chk.decisionSeq {
		last = max(last, d)
	}
	return last
}

// FuzzStep drives random input sequences through a core with the invariant checker
// after every step: no panic, no terminate before its audit ack, none for a critical
// subject or an exited instance, at most one decision per instance, terminate
// requests per window within budget, killed only after ack and exit, gap-free
// sequences, ring within capacity, and failed steps change nothing. The seeds below
// run on every `go test`; `go test -fuzz FuzzStep ./services/oomd/policy/` explores.
func FuzzStep(f *testing.F) {
	for _, seed := range [][]byte{
		// register hog, sample above hard, tick, ack, terminate ack, exit
		{2, 0, 0, 3, 0, 9, 0, 0, 0, 5, 0, 0, 6, 0, 0, 8, 0, 0},
		// two subjects over hard with budget 1: throttle then release over ticks
		{9, 0, 0, 2, 0, 0, 2, 1, 0, 3, 0, 9, 3, 1, 9, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		// critical samgrd over hard, then policy making hog critical mid-decision
		{2, 2, 0, 3, 2, 10, 2, 0, 0, 3, 0, 10, 0, 0, 0, 9, 0, 1, 5, 0, 0, 0, 0, 0},
		// spoofed samples, unknown and malformed subjects, unknown kind, invalid policy
		{2, 0, 0, 3, 0, 0x99, 3, 5, 3, 3, 6, 3, 9, 0, 0xff, 9, 0, 3, 5, 0, 0x80},
		// memory falls to oom, the claim is acked, a second OOM and a reboot request are
		// refused, ticks run to the bound, and a late acknowledgement arrives
		{10, 0, 9, 10, 0, 3, 10, 0, 1, 5, 0, 0, 11, 0, 0, 10, 0, 6, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 2},
		// a requested reboot acknowledged in time
		{11, 0, 0, 5, 0, 0, 0, 0, 0, 12, 0, 2, 12, 0, 3},
		// victims: hog and app read by the kernel, memory falls to imminentOom, the
		// victim is acked and killed, settle ticks pass, the next victim follows
		{2, 0, 0, 2, 1, 0, 4, 0, 0x41, 4, 1, 0x41, 10, 0, 5, 0, 0, 0, 5, 0, 0, 6, 0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0},
		// exit before ack, re-register with a new instance, refuse
		{2, 0, 0, 3, 0, 9, 0, 0, 0, 8, 0, 0, 2, 16, 0, 3, 16, 9, 0, 0, 0, 5, 0, 0, 7, 0, 0, 6, 0, 0},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 3*2000 {
			data = data[:3*2000]
		}
		cfg := Config{Policy: fuzzPolicies[0], RingSize: 8}
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		chk := newChecker(c, cfg)
		g := &fuzzGen{data: data, chk: chk}
		// ref gets the same inputs without slot handles: a handle may only save the
		// lookup, never change an outcome (a wrong one must not misattribute a sample).
		ref, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for n := 0; ; n++ {
			in, ok := g.next()
			if !ok {
				return
			}
			out, stepErr, err := chk.step(in)
			if err != nil {
				t.Fatalf("step %d %s: %v", n, FormatInput(in), err)
			}
			refIn := in
			refIn.Slot = 0
			refErr := ref.Step(refIn)
			refOut := ""
			if ref.HasReady() {
				refOut = FormatReady(ref.Ready())
				ref.Advance()
			}
			if (stepErr == nil) != (refErr == nil) || out != refOut {
				t.Fatalf("step %d %s with slot %d differs from the lookup by id:\n%v %q\n%v %q", n, FormatInput(in), in.Slot, stepErr, out, refErr, refOut)
			}
		}
	})
}
