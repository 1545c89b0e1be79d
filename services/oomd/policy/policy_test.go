package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPolicyValidate(t *testing.T) {
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("c%d", i)
		}
		return out
	}
	levels := LevelThresholds{WarningBytes: 300, ImminentOOMBytes: 200, OOMBytes: 100, HysteresisBytes: 50}
	cases := []struct {
		name  string
		edit  func(*Policy)
		field string // "" = valid
	}{
		{"default", func(*Policy) {}, ""},
		{"soft zero", func(p *Policy) { p.SoftBytes = 0 }, "softBytes"},
		{"hard below soft", func(p *Policy) { p.HardBytes = p.SoftBytes - 1 }, "hardBytes"},
		{"hard equals soft", func(p *Policy) { p.HardBytes = p.SoftBytes }, ""},
		{"hard too big", func(p *Policy) { p.HardBytes = MaxHardBytes + 1 }, "hardBytes"},
		{"hard at max", func(p *Policy) { p.HardBytes = MaxHardBytes }, ""},
		{"sampleMs low", func(p *Policy) { p.SampleMs = MinSampleMs - 1 }, "sampleMs"},
		{"sampleMs high", func(p *Policy) { p.SampleMs = MaxSampleMs + 1 }, "sampleMs"},
		{"budget zero", func(p *Policy) { p.KillBudget = 0 }, "killBudget"},
		{"budget high", func(p *Policy) { p.KillBudget = MaxKillBudget + 1 }, "killBudget"},
		{"window zero", func(p *Policy) { p.KillWindowTicks = 0 }, "killWindowTicks"},
		{"window high", func(p *Policy) { p.KillWindowTicks = MaxKillWindow + 1 }, "killWindowTicks"},
		{"critical too many", func(p *Policy) { p.Critical = ids(MaxCritical + 1) }, "critical"},
		{"critical at max", func(p *Policy) { p.Critical = ids(MaxCritical) }, ""},
		{"critical bad id", func(p *Policy) { p.Critical = []string{"ok", "Not"} }, "critical[1]"},
		{"override bad id", func(p *Policy) { p.Overrides = []SubjectLimit{{Subject: "", SoftBytes: 1, HardBytes: 1}} }, "overrides[0].subject"},
		{"override twice", func(p *Policy) {
			p.Overrides = []SubjectLimit{{Subject: "a", SoftBytes: 1, HardBytes: 1}, {Subject: "a", SoftBytes: 1, HardBytes: 1}}
		}, "overrides[1].subject"},
		{"override soft zero", func(p *Policy) { p.Overrides = []SubjectLimit{{Subject: "a", HardBytes: 1}} }, "overrides[0].softBytes"},
		{"override hard below soft", func(p *Policy) { p.Overrides = []SubjectLimit{{Subject: "a", SoftBytes: 2, HardBytes: 1}} }, "overrides[0].hardBytes"},
		{"overrides too many", func(p *Policy) { p.Overrides = make([]SubjectLimit, MaxOverrides+1) }, "overrides"},
		{"levels valid", func(p *Policy) { p.Levels = levels }, ""},
		{"levels oom zero", func(p *Policy) { p.Levels = LevelThresholds{HysteresisBytes: 1} }, "levels.oomBytes"},
		{"levels imminent not above oom", func(p *Policy) { l := levels; l.ImminentOOMBytes = 100; p.Levels = l }, "levels.imminentOomBytes"},
		{"levels warning not above imminent", func(p *Policy) { l := levels; l.WarningBytes = 200; p.Levels = l }, "levels.warningBytes"},
		{"levels hysteresis too big", func(p *Policy) { l := levels; l.HysteresisBytes = 201; p.Levels = l }, "levels.hysteresisBytes"},
		{"levels interval low", func(p *Policy) { l := levels; l.IntervalMs = MinLevelInterval - 1; p.Levels = l }, "levels.intervalMs"},
		{"oom timeout low", func(p *Policy) { p.OOMTimeoutMs = MinOOMTimeoutMs - 1 }, "oomTimeoutMs"},
		{"oom timeout high", func(p *Policy) { p.OOMTimeoutMs = MaxOOMTimeoutMs + 1 }, "oomTimeoutMs"},
		{"oom timeout default", func(p *Policy) { p.OOMTimeoutMs = 0 }, ""},
		{"victims full", func(p *Policy) {
			p.Victims = Victims{Level: VictimLevelWarning, PreferPoints: MaxVictimPoints, AvoidPoints: 1, SettleTicks: MaxVictimSettleTicks, DryRun: true,
				Prefer: []string{"a"}, Avoid: []string{"b"}, Never: ids(MaxVictimList)}
		}, ""},
		{"victims level unknown", func(p *Policy) { p.Victims.Level = VictimLevelImminent + 1 }, "victims.level"},
		{"victims prefer points high", func(p *Policy) { p.Victims.PreferPoints = MaxVictimPoints + 1 }, "victims.preferPoints"},
		{"victims avoid points high", func(p *Policy) { p.Victims.AvoidPoints = MaxVictimPoints + 1 }, "victims.avoidPoints"},
		{"victims settle high", func(p *Policy) { p.Victims.SettleTicks = MaxVictimSettleTicks + 1 }, "victims.settleTicks"},
		{"victims prefer bad id", func(p *Policy) { p.Victims.Prefer = []string{"ok", "-x"} }, "victims.prefer[1]"},
		{"victims never too many", func(p *Policy) { p.Victims.Never = ids(MaxVictimList + 1) }, "victims.never"},
		{"victims in two lists", func(p *Policy) { p.Victims.Prefer = []string{"a"}; p.Victims.Never = []string{"b", "a"} }, "victims.never[1]"},
		{"victims twice in one list", func(p *Policy) { p.Victims.Avoid = []string{"a", "a"} }, "victims.avoid[1]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultPolicy()
			tc.edit(&p)
			err := p.Validate()
			if tc.field == "" {
				assert.NoError(t, err, tc.name)
				return
			}
			require.Error(t, err, tc.name)
			var verr *ValidationError
			require.True(t, errors.As(err, &verr), "%s: %v", tc.name, err)
			assert.Equal(t, tc.field, verr.Field, tc.name)
			assert.True(t, strings.Contains(err.Error(), "must be"), "%s: the error states the bound: %v", tc.name, err)
		})
	}
}

func TestEffectiveCritical(t *testing.T) {
	p := DefaultPolicy()
	p.Critical = []string{"zeta", "init", "alpha"}
	assert.Equal(t, []string{"alpha", "execd", "init", "logd", "oomd", "policyd", "samgrd", "zeta"}, p.EffectiveCritical())
}

func TestVictimScore(t *testing.T) {
	def := Victims{}
	big := Victims{PreferPoints: 2000, AvoidPoints: 100}
	for _, tc := range []struct {
		name        string
		bytes, hard uint64
		pref        Preference
		v           Victims
		want        uint64
	}{
		{"half of hard", 100, 200, PreferenceNone, def, 500},
		{"rounds down", 199, 1000, PreferenceNone, def, 199},
		{"over hard", 400, 200, PreferenceNone, def, 2000},
		{"zero", 0, 200, PreferenceNone, def, 0},
		{"prefer adds the default 500", 100, 200, PreferencePrefer, def, 1000},
		{"prefer adds its points", 100, 200, PreferencePrefer, big, 2500},
		{"avoid takes the default 500", 150, 200, PreferenceAvoid, def, 250},
		{"avoid floors at zero", 50, 200, PreferenceAvoid, def, 0},
		{"avoid takes its points", 150, 200, PreferenceAvoid, big, 650},
		{"no overflow in bytes*1000", math.MaxUint64 / 10, MaxHardBytes, PreferenceNone, def, 1638399}, // exact: floor((2^64-1)/10*1000 / 2^50)
		{"saturates", math.MaxUint64, 1, PreferenceNone, def, math.MaxUint64},
		{"prefer saturates", math.MaxUint64, 1, PreferencePrefer, def, math.MaxUint64},
	} {
		assert.Equal(t, tc.want, Score(tc.bytes, tc.hard, tc.pref, tc.v), tc.name)
	}
}

// TestVictimReasonFits: the longest reason (64-byte ids, the largest score a candidate
// can have: at its hard limit and preferred by MaxVictimPoints) is not cut, so the
// runners-up always survive into the audit record.
func TestVictimReasonFits(t *testing.T) {
	p := DefaultPolicy()
	p.Levels = LevelThresholds{WarningBytes: 300, ImminentOOMBytes: 200, OOMBytes: 100}
	p.Victims.PreferPoints = MaxVictimPoints
	ids := []string{strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)}
	p.Victims.Prefer = ids
	c, err := New(Config{Policy: p})
	require.NoError(t, err)
	for _, id := range ids {
		require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: id, Instance: 1}))
		require.NoError(t, c.Step(Input{Kind: InputSample, Subject: id, Claimed: id, Instance: 1, Bytes: p.HardBytes}))
	}
	c.Tick()
	ch, ok := c.VictimPreview()
	require.True(t, ok)
	require.Len(t, ch.RunnersUp, MaxRunnersUp)
	assert.Equal(t, ids[0], ch.Subject, "ties go to the smaller id")
	assert.Equal(t, uint64(1000+MaxVictimPoints), ch.Score)
	assert.LessOrEqual(t, len(ch.Reason), MaxReasonBytes)
	assert.True(t, strings.HasSuffix(ch.Reason, ","+ids[2]+":101000"), ch.Reason)
}

func TestVictimsJSON(t *testing.T) {
	var p Policy
	require.NoError(t, json.Unmarshal([]byte(`{"victims":{"level":"off","settleTicks":3,"never":["db"]}}`), &p))
	assert.Equal(t, Victims{Level: VictimLevelOff, SettleTicks: 3, Never: []string{"db"}}, p.Victims)
	b, err := json.Marshal(Policy{Victims: Victims{Level: VictimLevelWarning, DryRun: true}})
	require.NoError(t, err)
	assert.Contains(t, string(b), `"victims":{"level":"warning","dryRun":true}`)
	b, err = json.Marshal(DefaultPolicy())
	require.NoError(t, err)
	assert.NotContains(t, string(b), "victims", "unset victims stay out of a policy file")
	assert.ErrorContains(t, json.Unmarshal([]byte(`{"victims":{"level":"oom"}}`), &p), "want off, warning or imminentOom")
}
