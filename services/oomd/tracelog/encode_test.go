package tracelog

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/policy"
)

// TestAppendInputRecord: the hand-written encoder writes exactly what json.Marshal
// writes for every input it takes, takes the inputs of a steady tick, and leaves the
// rest to json.Marshal.
func TestAppendInputRecord(t *testing.T) {
	// A field added to policy.Input must be written by appendInputRecord (and given a
	// value below), or the trace would drop it without a word.
	require.Equal(t, 16, reflect.TypeFor[policy.Input]().NumField(), "policy.Input changed: update appendInputRecord and this test")
	same := func(in policy.Input) bool {
		t.Helper()
		got, ok := appendInputRecord(nil, &in)
		if !ok {
			return false
		}
		want, err := json.Marshal(Record{Input: &in})
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "%+v", in)
		return true
	}
	for _, in := range []policy.Input{
		{Kind: policy.InputTick},
		{Kind: policy.InputKernel, Subject: "idle-a", Instance: 3, Bytes: 1 << 20, Slot: 2},
		{Kind: policy.InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 123 << 20, Count: 1, Slot: 1},
		{Kind: policy.InputMemAvailable, Bytes: 4 << 30},
		{Kind: policy.InputPressure, Pressure: 1234},
		{Kind: policy.InputAuditAck, Seq: 17},
		{Kind: policy.InputRegister, Subject: "web", Instance: 2, Critical: true, Preference: policy.PreferenceAvoid},
		{Kind: policy.InputTeardownDone, Graceful: true, NotStopped: []string{"a", "b"}},
		{Kind: policy.InputExited, Subject: "web", Instance: 2, Decision: 9, Reason: "signal=9 sigkill-after-timeout"},
	} {
		assert.True(t, same(in), "the fast path takes %+v", in)
	}
	p := policy.DefaultPolicy()
	for _, in := range []policy.Input{
		{Kind: policy.InputPolicy, Policy: &p},
		{Kind: policy.InputKind(200)},
		{Kind: policy.InputRegister, Subject: "x", Preference: policy.Preference(9)},
		{Kind: policy.InputSample, Subject: "x", Claimed: "<evil>"},
		{Kind: policy.InputExited, Subject: "x", Reason: "quote \" and \\ and \n and é"},
		{Kind: policy.InputTeardownDone, NotStopped: []string{"a&b"}},
	} {
		_, ok := appendInputRecord(nil, &in)
		assert.False(t, ok, "json.Marshal writes %+v", in)
	}

	// Random inputs over every field, strings from a set that mixes plain and escaped.
	r := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "hog", "a-b_c.d", "kernel=1 published=2", "x<y", "tab\there", "ü", "\"q\"", "a&b", "~!@#$%^*()"}
	num := func() uint64 {
		switch r.IntN(3) {
		case 0:
			return 0
		case 1:
			return r.Uint64N(1000)
		}
		return r.Uint64()
	}
	var fast int
	for range 20_000 {
		in := policy.Input{
			Kind: policy.InputKind(r.IntN(20)), Subject: strs[r.IntN(len(strs))], Instance: num(),
			Claimed: strs[r.IntN(len(strs))], Bytes: num(), Critical: r.IntN(2) == 0,
			Preference: policy.Preference(r.IntN(5)), Seq: num(), Decision: num(),
			Reason: strs[r.IntN(len(strs))], Count: num(), Pressure: uint32(num()), Slot: uint32(num()),
			Graceful: r.IntN(2) == 0,
		}
		for range r.IntN(3) {
			in.NotStopped = append(in.NotStopped, strs[r.IntN(len(strs))])
		}
		if _, err := json.Marshal(Record{Input: &in}); err != nil {
			continue // an input json.Marshal refuses (an unnamed kind) is never written
		}
		if same(in) {
			fast++
		}
	}
	assert.Greater(t, fast, 500, "the random inputs reach the fast path")
}
