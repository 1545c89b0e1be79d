package policy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDurableDecisionsAreNotDecidedAgain: a restarted core is given the decision an
// earlier run made durably for hog instance 1 (Config.Durable) and the highest id used
// (Config.DecisionBase). hog instance 1 crossing its hard limit again is not decided a
// second time (no new killDecided record); the old decision's terminate request goes
// out; a new instance, and another subject, get fresh ids above the base.
func TestDurableDecisionsAreNotDecidedAgain(t *testing.T) {
	cfg := Config{Policy: testPolicy(), DecisionBase: 9,
		Durable: []DurableDecision{{ID: 7, Subject: "hog", Instance: 1, Bytes: 300, Limit: 200}}}
	c, err := New(cfg)
	require.NoError(t, err)
	h := &harness{t: t, c: c, chk: newChecker(c, cfg)}

	h.tick()
	assert.Empty(t, h.term, "nothing is released before its instance registers")
	h.register("hog", false)
	h.sample("hog", 300)
	h.tick()
	assert.Empty(t, h.audit, "the durable decision is not decided (nor audited) again")
	require.Len(t, h.term, 1)
	assert.Equal(t, TerminateRequest{Decision: 7, Subject: "hog", Instance: 1, Bytes: 300, Limit: 200, Reason: ReasonHardLimit}, h.term[0])

	h.register("other", false)
	h.sample("other", 300)
	h.tick()
	require.Len(t, h.audit, 1)
	assert.Equal(t, EventKillDecided, h.audit[0].Kind)
	assert.Equal(t, uint64(10), h.audit[0].Decision, "new ids continue above DecisionBase")

	h.must(Input{Kind: InputRegister, Subject: "hog", Instance: 2})
	h.must(Input{Kind: InputSample, Subject: "hog", Instance: 2, Claimed: "hog", Bytes: 300})
	h.tick()
	require.Len(t, h.audit, 2)
	assert.Equal(t, uint64(11), h.audit[1].Decision, "a new instance gets its own decision")
}

func TestDurableDecisionsValidated(t *testing.T) {
	for name, ds := range map[string][]DurableDecision{
		"zero id":   {{ID: 0, Subject: "hog", Instance: 1}},
		"duplicate": {{ID: 3, Subject: "hog", Instance: 1}, {ID: 3, Subject: "b", Instance: 1}},
		"subject":   {{ID: 3, Subject: "", Instance: 1}},
	} {
		_, err := New(Config{Policy: testPolicy(), Durable: ds})
		assert.Error(t, err, name)
	}
}

// TestDurableDecisionCompletedByKeptExit: the earlier run requested decision 7's
// terminate and died; hog instance 1 exited while oomd was down, and execd kept the
// report with the decision it followed. The restarted core reports the kill once, with
// an audited killed record (which ends the decision for the run after this one). An
// exit that followed no terminate of that decision only cancels it, audited too.
func TestDurableDecisionCompletedByKeptExit(t *testing.T) {
	cfg := Config{Policy: testPolicy(), DecisionBase: 8, Durable: []DurableDecision{
		{ID: 7, Subject: "hog", Instance: 1, Bytes: 300, Limit: 200},
		{ID: 8, Subject: "web", Instance: 4, Bytes: 500, Limit: 200},
	}}
	c, err := New(cfg)
	require.NoError(t, err)
	h := &harness{t: t, c: c, chk: newChecker(c, cfg)}

	h.must(Input{Kind: InputExited, Subject: "hog", Instance: 1, Decision: 7, Reason: "signal=15"})
	h.must(Input{Kind: InputExited, Subject: "web", Instance: 4, Reason: "exit=0"})
	require.Len(t, h.audit, 2)
	assert.Equal(t, AuditRecord{WriterSeq: 1, Kind: EventKilled, Subject: "hog", Instance: 1, Bytes: 300, Limit: 200, Decision: 7, Reason: "signal=15"}, h.audit[0])
	assert.Equal(t, EventSubjectExited, h.audit[1].Kind)
	assert.Equal(t, uint64(8), h.audit[1].Decision)
	assert.Contains(t, h.audit[1].Reason, "decision ended unsent")
	assert.Equal(t, uint64(1), c.Counters().Kills)
	killed := 0
	for _, ev := range h.events {
		if ev.Kind == EventKilled {
			killed++
			assert.Equal(t, uint64(7), ev.Decision)
		}
	}
	assert.Equal(t, 1, killed)

	// A repeated report changes nothing: the decision is gone.
	h.must(Input{Kind: InputExited, Subject: "hog", Instance: 1, Decision: 7, Reason: "signal=15"})
	assert.Len(t, h.audit, 2)
	assert.Equal(t, uint64(1), c.Counters().Kills)
}
