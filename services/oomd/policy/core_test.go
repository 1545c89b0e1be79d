package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testPolicy is small enough to cross with hand-written numbers.
func testPolicy() Policy {
	return Policy{SoftBytes: 100, HardBytes: 200, SampleMs: 100, KillBudget: 2, KillWindowTicks: 10}
}

// harness drives a core like the daemon shell does and keeps everything it emitted.
type harness struct {
	t      *testing.T
	c      *Core
	chk    *checker
	audit  []AuditRecord
	term   []TerminateRequest
	timers []HaltTimer
	events []Event
}

func newHarness(t *testing.T, p Policy) *harness {
	t.Helper()
	cfg := Config{Policy: p}
	c, err := New(cfg)
	require.NoError(t, err)
	return &harness{t: t, c: c, chk: newChecker(c, cfg)}
}

// step applies in, checks the invariants and collects the output.
func (h *harness) step(in Input) error {
	h.t.Helper()
	before := len(h.c.Ready().Events) // Ready is re-callable: this does not consume
	require.Zero(h.t, before, "output left from an earlier step")
	err := h.c.Step(in)
	if err == nil {
		h.chk.observe(in)
	}
	rd := h.c.Ready()
	h.audit = append(h.audit, rd.Audit...)
	h.term = append(h.term, rd.Terminate...)
	h.timers = append(h.timers, rd.HaltTimer...)
	h.events = append(h.events, rd.Events...)
	require.NoError(h.t, h.chk.check(rd), "invariant after %s", FormatInput(in))
	h.c.Advance()
	return err
}

func (h *harness) must(in Input) {
	h.t.Helper()
	require.NoError(h.t, h.step(in), FormatInput(in))
}

func (h *harness) register(id string, critical bool) {
	h.t.Helper()
	h.must(Input{Kind: InputRegister, Subject: id, Instance: 1, Critical: critical})
}

func (h *harness) sample(id string, bytes uint64) {
	h.t.Helper()
	h.must(Input{Kind: InputSample, Subject: id, Instance: 1, Claimed: id, Bytes: bytes})
}

func (h *harness) tick() { h.t.Helper(); h.must(Input{Kind: InputTick}) }

// ackAudit acknowledges everything produced so far, as logd's sync would.
func (h *harness) ackAudit() {
	h.t.Helper()
	if n := len(h.audit); n > 0 {
		h.must(Input{Kind: InputAuditAck, Seq: h.audit[n-1].WriterSeq})
	}
}

func (h *harness) kinds(kind EventKind) []Event {
	var out []Event
	for _, ev := range h.events {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// TestRejectFakeMemstat: a sample whose payload claims another subject is dropped,
// reported as memstatRejected against the authenticated sender, counted, and changes
// nobody's usage — not the claimed victim's, not the sender's.
func TestRejectFakeMemstat(t *testing.T) {
	h := newHarness(t, testPolicy())
	h.register("evil", false)
	h.register("victim", false)
	h.sample("victim", 50)
	h.tick()

	// evil reports a huge usage claiming to be victim, many times in one tick.
	for range 10 {
		h.must(Input{Kind: InputSample, Subject: "evil", Instance: 1, Claimed: "victim", Bytes: 1 << 40})
	}
	h.tick()

	rejected := h.kinds(EventMemstatRejected)
	require.Len(t, rejected, 1, "a flood yields one event per subject per tick")
	assert.Equal(t, "evil", rejected[0].Subject, "the event names the authenticated sender")
	assert.Equal(t, "claimed=victim", rejected[0].Reason)
	assert.Empty(t, h.kinds(EventKillDecided), "a spoofed sample must not cause a decision")
	assert.Empty(t, h.kinds(EventSoftExceeded))
	require.Len(t, h.audit, 1, "the rejection is audited, at the same bounded rate as the event")
	assert.Equal(t, EventMemstatRejected, h.audit[0].Kind)
	assert.Equal(t, "evil", h.audit[0].Subject)
	assert.Equal(t, "claimed=victim attempts=1", h.audit[0].Reason)

	victim, ok := h.c.Subject("victim")
	require.True(t, ok)
	assert.Equal(t, uint64(50), victim.Bytes, "victim's usage is unchanged")
	evil, ok := h.c.Subject("evil")
	require.True(t, ok)
	assert.Equal(t, uint64(0), evil.Bytes, "the sender's usage is unchanged too")
	assert.Equal(t, uint64(10), evil.Rejected)
	assert.Equal(t, uint64(10), h.c.Counters().Rejected)
	assert.Equal(t, uint64(1), h.c.Counters().Accepted)

	// A sample claiming nothing is not the sender's claim either: rejected.
	h.must(Input{Kind: InputSample, Subject: "evil", Instance: 1, Bytes: 1 << 40})
	assert.Equal(t, uint64(11), h.c.Counters().Rejected)

	// The shell coalesces a flood into one input carrying the count: the count is
	// exact, the event is still one per tick, and the usage still untouched.
	h.tick()
	h.must(Input{Kind: InputSample, Subject: "evil", Instance: 1, Claimed: "victim", Bytes: 1 << 40, Count: 10_000})
	assert.Equal(t, uint64(10_011), h.c.Counters().Rejected)
	evil, _ = h.c.Subject("evil")
	assert.Equal(t, uint64(10_011), evil.Rejected)
	assert.Equal(t, uint64(0), evil.Bytes)
	assert.Len(t, h.kinds(EventMemstatRejected), 3, "one per tick: ticks 1, 2 and 3")
}

// TestRejectCriticalServiceKill: samgrd (a default critical service) crossing the
// hard limit is denied with reason "critical", audited, once per crossing, and no
// terminate request is ever produced, even with a policy that does not list it.
func TestRejectCriticalServiceKill(t *testing.T) {
	p := testPolicy()
	p.Critical = []string{"metricsd"} // a policy list adds to the defaults, never replaces them
	h := newHarness(t, p)
	h.register("samgrd", false)
	h.sample("samgrd", 10_000)
	h.tick()
	h.ackAudit()
	for range 20 {
		h.sample("samgrd", 20_000)
		h.tick()
	}
	h.ackAudit()

	denied := h.kinds(EventKillDenied)
	require.Len(t, denied, 1, "once per crossing")
	assert.Equal(t, "samgrd", denied[0].Subject)
	assert.Equal(t, ReasonCritical, denied[0].Reason)
	assert.Equal(t, uint64(10_000), denied[0].Bytes)
	assert.Equal(t, uint64(200), denied[0].Limit)
	require.Len(t, h.audit, 1, "the denial is audited")
	assert.Equal(t, EventKillDenied, h.audit[0].Kind)
	assert.Empty(t, h.term, "never a terminate for a critical subject")
	assert.Empty(t, h.kinds(EventKillDecided))
	assert.Equal(t, uint64(1), h.c.Counters().Denied)

	// Falling to the limit re-arms; the next crossing is denied again.
	h.sample("samgrd", 200)
	h.tick()
	h.sample("samgrd", 201)
	h.tick()
	assert.Len(t, h.kinds(EventKillDenied), 2)
	assert.Empty(t, h.term)
	st, _ := h.c.Subject("samgrd")
	assert.True(t, st.Critical)
}

// TestRateLimitKills: with budget 2 per 5 ticks, five simultaneous decisions give two
// terminate requests at once and the rest throttled (once each), released in decision
// order two per window; the schedule is the same on every run.
func TestRateLimitKills(t *testing.T) {
	run := func() string {
		p := testPolicy()
		p.KillBudget, p.KillWindowTicks = 2, 5
		h := newHarness(t, p)
		for i := range 5 {
			h.register(fmt.Sprintf("app%d", i), false)
		}
		for i := 4; i >= 0; i-- {
			h.sample(fmt.Sprintf("app%d", i), 1000)
		}
		h.tick()
		h.ackAudit()
		require.Len(t, h.term, 2, "only the budget is released at once")
		assert.Len(t, h.kinds(EventKillThrottled), 3)
		for range 20 {
			h.tick()
		}
		require.Len(t, h.term, 5, "every throttled decision is released eventually")
		assert.Len(t, h.kinds(EventKillThrottled), 3, "killThrottled once per decision")
		assert.Equal(t, uint64(3), h.c.Counters().Throttled)

		var sched strings.Builder
		for _, ev := range h.kinds(EventKillRequested) {
			fmt.Fprintf(&sched, "tick=%d decision=%d subject=%s\n", ev.Tick, ev.Decision, ev.Subject)
		}
		return sched.String()
	}
	want := "tick=1 decision=1 subject=app0\n" +
		"tick=1 decision=2 subject=app1\n" +
		"tick=6 decision=3 subject=app2\n" +
		"tick=6 decision=4 subject=app3\n" +
		"tick=11 decision=5 subject=app4\n"
	assert.Equal(t, want, run())
	assert.Equal(t, want, run(), "rate limiting is deterministic")
}

// TestHardCrossingKillsOnce: a subject that stays above, dips and re-crosses the hard
// limit gets exactly one decision and one terminate for its whole instance lifetime.
func TestHardCrossingKillsOnce(t *testing.T) {
	h := newHarness(t, testPolicy())
	h.register("hog", false)
	for _, b := range []uint64{300, 400, 150, 500, 10, 900} {
		h.sample("hog", b)
		h.tick()
		h.ackAudit()
	}
	require.Len(t, h.kinds(EventKillDecided), 1)
	require.Len(t, h.audit, 1)
	assert.Equal(t, EventKillDecided, h.audit[0].Kind)
	require.Len(t, h.term, 1)
	assert.Equal(t, TerminateRequest{Decision: 1, Subject: "hog", Instance: 1, Bytes: 300, Limit: 200, Reason: ReasonHardLimit}, h.term[0])

	// killed only once both the terminate ack and the exit are in, in either order.
	h.must(Input{Kind: InputExited, Subject: "hog", Instance: 1, Reason: "signal=TERM"})
	assert.Empty(t, h.kinds(EventKilled), "exit alone is not a kill")
	h.must(Input{Kind: InputTerminateAck, Decision: 1})
	killed := h.kinds(EventKilled)
	require.Len(t, killed, 1)
	assert.Equal(t, Event{Seq: killed[0].Seq, Tick: 6, Subject: "hog", Kind: EventKilled, Bytes: 300, Limit: 200, Decision: 1, Reason: "signal=TERM"}, killed[0])
	_, ok := h.c.Subject("hog")
	assert.False(t, ok, "exited subjects are forgotten")
	assert.Equal(t, uint64(1), h.c.Counters().Kills)
}

// TestTerminateWaitsForAudit: no terminate request before the ack of the decision's
// own audit record, however many ticks pass; an ack of an earlier record is not enough.
func TestTerminateWaitsForAudit(t *testing.T) {
	h := newHarness(t, testPolicy())
	h.register("samgrd", false)
	h.register("hog", false)
	h.sample("samgrd", 1000) // denial: writerSeq 2 (hog sorts first)
	h.sample("hog", 1000)    // decision: writerSeq 1
	h.tick()
	require.Len(t, h.audit, 2)
	require.Equal(t, EventKillDecided, h.audit[0].Kind)
	for range 50 {
		h.tick()
	}
	assert.Empty(t, h.term)
	require.Error(t, h.step(Input{Kind: InputAuditAck, Seq: 3}), "acking a record never produced")
	assert.Empty(t, h.term)
	h.must(Input{Kind: InputAuditAck, Seq: 1})
	assert.Len(t, h.term, 1)
}

// TestAdvanceKeepsLaterOutput: output produced after Ready (the shell acks the audit
// while handling that Ready) survives Advance and shows in the next Ready.
func TestAdvanceKeepsLaterOutput(t *testing.T) {
	c, err := New(Config{Policy: testPolicy()})
	require.NoError(t, err)
	require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: "hog", Instance: 1}))
	require.NoError(t, c.Step(Input{Kind: InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 999}))
	c.Tick()
	rd := c.Ready()
	require.Len(t, rd.Audit, 1)
	require.NoError(t, c.Step(Input{Kind: InputAuditAck, Seq: rd.Audit[0].WriterSeq}))
	c.Advance()
	require.True(t, c.HasReady(), "the terminate produced during the Ready must not be dropped")
	rd = c.Ready()
	assert.Empty(t, rd.Audit)
	require.Len(t, rd.Terminate, 1)
	assert.Equal(t, EventKillRequested, rd.Events[0].Kind)
	c.Advance()
	assert.False(t, c.HasReady())
}

// TestStepErrorsChangeNothing: every malformed input returns an error wrapping
// ErrBadInput and leaves the core exactly as it was.
func TestStepErrorsChangeNothing(t *testing.T) {
	bad := Policy{SoftBytes: 10, HardBytes: 5, SampleMs: 100, KillBudget: 1, KillWindowTicks: 1}
	cases := []struct {
		name string
		in   Input
	}{
		{"unknown kind", Input{Kind: 0}},
		{"unknown kind high", Input{Kind: 200}},
		{"nil policy", Input{Kind: InputPolicy}},
		{"invalid policy", Input{Kind: InputPolicy, Policy: &bad}},
		{"register bad id", Input{Kind: InputRegister, Subject: "Hog"}},
		{"register empty id", Input{Kind: InputRegister}},
		{"register long id", Input{Kind: InputRegister, Subject: strings.Repeat("a", 65)}},
		{"sample bad id", Input{Kind: InputSample, Subject: "a b", Claimed: "a b"}},
		{"exited bad id", Input{Kind: InputExited, Subject: "-x"}},
		{"ack beyond", Input{Kind: InputAuditAck, Seq: 99}},
		{"terminate ack unknown", Input{Kind: InputTerminateAck, Decision: 99}},
		{"terminate ack zero", Input{Kind: InputTerminateAck}},
		{"terminate refused not requested", Input{Kind: InputTerminateRefused, Decision: 1}},
		{"terminate ack not requested", Input{Kind: InputTerminateAck, Decision: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testPolicy())
			h.register("hog", false)
			h.sample("hog", 500)
			h.tick() // decision 1, audit pending: not yet requested
			_, stepErr, invErr := h.chk.step(tc.in)
			require.NoError(t, invErr, tc.name)
			require.Error(t, stepErr, tc.name)
			assert.True(t, errors.Is(stepErr, ErrBadInput), "%s: %v", tc.name, stepErr)
		})
	}
}

// TestMaxSubjects: registrations beyond MaxSubjects are refused with
// ErrTooManySubjects, and a re-registration of a known subject still works.
func TestMaxSubjects(t *testing.T) {
	if testing.Short() {
		t.Skip("registers MaxSubjects subjects")
	}
	c, err := New(Config{Policy: testPolicy(), RingSize: 1})
	require.NoError(t, err)
	for i := range MaxSubjects {
		require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: fmt.Sprintf("s%06d", i), Instance: 1}))
		c.Advance()
		c.Ready()
		c.Advance()
	}
	err = c.Step(Input{Kind: InputRegister, Subject: "one-too-many", Instance: 1})
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrTooManySubjects), err)
	assert.True(t, errors.Is(err, ErrBadInput), err)
	require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: "s000000", Instance: 2}), "a restart is not a new subject")
	list, truncated := c.Subjects(3)
	assert.True(t, truncated)
	require.Len(t, list, 3)
	assert.Equal(t, []string{"s000000", "s000001", "s000002"}, []string{list[0].Subject, list[1].Subject, list[2].Subject})
	assert.Equal(t, uint64(2), list[0].Instance)
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{})
	require.Error(t, err, "the zero policy is invalid")
	var verr *ValidationError
	require.True(t, errors.As(err, &verr), err)
	assert.Equal(t, "softBytes", verr.Field)

	for _, size := range []int{-1, MaxRingSize + 1} {
		_, err := New(Config{Policy: testPolicy(), RingSize: size})
		assert.Error(t, err, "ring size %d", size)
	}
	c, err := New(Config{Policy: testPolicy(), AuditSeqBase: 41})
	require.NoError(t, err)
	assert.Equal(t, uint64(1), c.PolicyVersion())
	require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: "hog", Instance: 1}))
	require.NoError(t, c.Step(Input{Kind: InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 999}))
	c.Tick()
	rd := c.Ready()
	require.Len(t, rd.Audit, 1)
	assert.Equal(t, uint64(42), rd.Audit[0].WriterSeq, "the journal sequence continues after AuditSeqBase")
}

// TestPolicyIsCopied: the caller cannot change the policy in force through the slices
// it passed in or got back.
func TestPolicyIsCopied(t *testing.T) {
	p := testPolicy()
	p.Critical = []string{"a"}
	c, err := New(Config{Policy: p})
	require.NoError(t, err)
	p.Critical[0] = "b"
	got := c.Policy()
	assert.Equal(t, []string{"a"}, got.Critical)
	got.Critical[0] = "c"
	assert.Equal(t, []string{"a"}, c.Policy().Critical)
}

func TestInputKindText(t *testing.T) {
	for k := InputTick; k <= InputExited; k++ {
		b, err := k.MarshalText()
		require.NoError(t, err)
		var back InputKind
		require.NoError(t, back.UnmarshalText(b))
		assert.Equal(t, k, back)
	}
	_, err := InputKind(0).MarshalText()
	assert.Error(t, err)
	var k InputKind
	assert.Error(t, k.UnmarshalText([]byte("nope")))
}

// TestEventSeqBase: a core started over an earlier run's high-water mark numbers its
// events above it, and a reader's since from that earlier run is told exactly how many
// numbers it lost: every one above its since up to the base, plus those this run's ring
// overwrote.
func TestEventSeqBase(t *testing.T) {
	const base = 5000
	cfg := Config{Policy: testPolicy(), RingSize: 4, EventSeqBase: base}
	c, err := New(cfg)
	require.NoError(t, err)
	h := &harness{t: t, c: c, chk: newChecker(c, cfg)}
	assert.Equal(t, uint64(base), c.LastSeq(), "no event yet: LastSeq is the base")
	assert.Equal(t, uint64(base), c.EventSeqBase())

	evs, next, missed := c.Events(4990, 10)
	assert.Empty(t, evs)
	assert.Equal(t, uint64(base), next)
	assert.Equal(t, uint64(10), missed, "seqs 4991..5000 went with the earlier run")

	h.register("a", false)
	for _, b := range []uint64{150, 50, 150, 50, 150} { // soft crossings: one event each way
		h.sample("a", b)
		h.tick()
	}
	require.NotEmpty(t, h.events)
	assert.Equal(t, uint64(base+1), h.events[0].Seq, "the first event of this run is above the base")
	last := h.events[len(h.events)-1].Seq
	assert.Greater(t, last, uint64(base+4), "enough events to wrap the ring of 4")

	evs, next, missed = c.Events(4990, 10)
	require.Len(t, evs, 4)
	assert.Equal(t, last-3, evs[0].Seq)
	assert.Equal(t, last, next)
	assert.Equal(t, uint64(10)+(last-4-base), missed, "earlier run's 10 plus this run's overwritten")

	evs, _, missed = c.Events(last-1, 10)
	require.Len(t, evs, 1)
	assert.Zero(t, missed)
}
