package policy

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestFormatEventForms: the one event formatter in both its forms. The Canonical lines
// are what replay output and the golden files hold, byte for byte; the Human ones are
// what oomctl prints.
func TestFormatEventForms(t *testing.T) {
	for _, tc := range []struct {
		ev               Event
		canonical, human string
	}{
		{
			Event{Seq: 1, Tick: 2, Subject: "hog", Kind: EventKilled, Bytes: 3, Limit: 4, Reason: "signal=15", Decision: 5},
			`event seq=1 tick=2 kind=killed subject=hog bytes=3 limit=4 decision=5 reason="signal=15"`,
			`seq=1 tick=2 killed subject=hog bytes=3B limit=4B decision=5 reason=signal=15`,
		},
		{
			Event{Seq: 3, Tick: 4, Subject: "hog", Kind: EventKillDecided, Bytes: 16<<20 + 1<<19, Limit: 8 << 20, Decision: 1, WallTimeNs: 99},
			`event seq=3 tick=4 kind=killDecided subject=hog bytes=17301504 limit=8388608 decision=1`,
			`seq=3 tick=4 killDecided subject=hog bytes=16.5MiB limit=8MiB decision=1`,
		},
		{
			Event{Kind: EventPolicyChanged, Reason: `version=2 "x"`},
			`event seq=0 tick=0 kind=policyChanged reason="version=2 \"x\""`,
			`seq=0 tick=0 policyChanged reason=version=2 "x"`,
		},
		{
			Event{Seq: 6, Tick: 10, Kind: 99},
			`event seq=6 tick=10 kind=unknown`,
			`seq=6 tick=10 unknown`,
		},
	} {
		assert.Equal(t, tc.canonical, FormatEvent(tc.ev, Canonical), "canonical")
		assert.Equal(t, tc.human, FormatEvent(tc.ev, Human), "human")
	}
}
