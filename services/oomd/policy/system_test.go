package policy

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLevelNext pins the hysteresis edges: enter at <= threshold, leave only above
// threshold + hysteresis, several levels at once both ways.
func TestLevelNext(t *testing.T) {
	th := LevelThresholds{WarningBytes: 1000, ImminentOOMBytes: 600, OOMBytes: 300, HysteresisBytes: 100}
	cases := []struct {
		cur   Level
		avail uint64
		want  Level
	}{
		{LevelNormal, 1001, LevelNormal},
		{LevelNormal, 1000, LevelWarning},
		{LevelNormal, 601, LevelWarning},
		{LevelNormal, 600, LevelImminentOOM},
		{LevelNormal, 300, LevelOOM},
		{LevelNormal, 0, LevelOOM},
		{LevelWarning, 1100, LevelWarning},
		{LevelWarning, 1101, LevelNormal},
		{LevelWarning, 600, LevelImminentOOM},
		{LevelImminentOOM, 700, LevelImminentOOM},
		{LevelImminentOOM, 701, LevelWarning},
		{LevelImminentOOM, 1101, LevelNormal},
		{LevelImminentOOM, 300, LevelOOM},
		{LevelOOM, 400, LevelOOM},
		{LevelOOM, 401, LevelImminentOOM},
		{LevelOOM, 701, LevelWarning},
		{LevelOOM, 1100, LevelWarning},
		{LevelOOM, 1101, LevelNormal},
		{LevelOOM, ^uint64(0), LevelNormal},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, th.Next(c.cur, c.avail), "from %s at %d", c.cur, c.avail)
	}

	// No hysteresis: the threshold itself is the only edge.
	th.HysteresisBytes = 0
	assert.Equal(t, LevelWarning, th.Next(LevelWarning, 1000))
	assert.Equal(t, LevelNormal, th.Next(LevelWarning, 1001))
	// Off: always normal.
	assert.Equal(t, LevelNormal, LevelThresholds{}.Next(LevelOOM, 0))
	// A hysteresis bound beyond 2^64 saturates instead of wrapping to a tiny number.
	big := LevelThresholds{WarningBytes: ^uint64(0) - 1, ImminentOOMBytes: 20, OOMBytes: 10, HysteresisBytes: 5}
	assert.Equal(t, LevelWarning, big.Next(LevelWarning, ^uint64(0)))
}

// TestLevelNextMonotone: for every starting level, a falling MemAvailable never makes
// the level shallower and a rising one never deeper.
func TestLevelNextMonotone(t *testing.T) {
	th := LevelThresholds{WarningBytes: 40, ImminentOOMBytes: 25, OOMBytes: 10, HysteresisBytes: 7}
	for cur := LevelNormal; cur <= LevelOOM; cur++ {
		prev := th.Next(cur, 0)
		for avail := uint64(1); avail < 60; avail++ {
			l := th.Next(cur, avail)
			require.LessOrEqual(t, l, prev, fmt.Sprintf("from %s: %d gives %s after %s", cur, avail, l, prev))
			prev = l
		}
	}
}

// TestHaltTokenOnce: whatever asks, the token is claimed once, every later request is
// refused with the claimer and tick named, and only one outcome ever leaves the core.
func TestHaltTokenOnce(t *testing.T) {
	p := testPolicy()
	p.Levels = LevelThresholds{WarningBytes: 1000, ImminentOOMBytes: 600, OOMBytes: 300}
	p.OOMTimeoutMs = 2500
	h := newHarness(t, p)
	h.must(Input{Kind: InputTick})
	h.must(Input{Kind: InputRebootRequest, Reason: RebootUserRequest})
	for range 3 {
		h.must(Input{Kind: InputMemAvailable, Bytes: 100})  // OOM
		h.must(Input{Kind: InputMemAvailable, Bytes: 5000}) // and back
		h.must(Input{Kind: InputRebootRequest, Reason: RebootOOM})
	}
	var claimed, refused int
	for _, e := range h.events {
		switch e.Kind {
		case EventHaltClaimed:
			claimed++
			assert.Equal(t, RebootUserRequest, e.Reason)
		case EventHaltRefused:
			refused++
			assert.Contains(t, e.Reason, "halt token already claimed by userRequest at tick 1")
		}
	}
	assert.Equal(t, 1, claimed)
	assert.Equal(t, 6, refused)
	// The wall-clock bound leaves once, with the claim, as a Ready field.
	assert.Equal(t, []HaltTimer{{Ms: 2500}}, h.timers)
	assert.Equal(t, "halt token already claimed by userRequest at tick 1", h.c.Halt().HaltRefusal())
}
