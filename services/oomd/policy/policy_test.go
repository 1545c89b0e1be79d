package policy

import (
	"errors"
	"fmt"
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

func TestValidateSubjectID(t *testing.T) {
	for id, ok := range map[string]bool{
		"hog": true, "a": true, "0x": true, "svc.v2_a-b": true, strings.Repeat("a", 64): true,
		"": false, strings.Repeat("a", 65): false, "Hog": false, "-a": false, ".a": false,
		"a b": false, "a/b": false, "é": false, "a\n": false,
	} {
		assert.Equal(t, ok, ValidateSubjectID(id) == nil, "%q", id)
	}
}

func TestEffectiveCritical(t *testing.T) {
	p := DefaultPolicy()
	p.Critical = []string{"zeta", "init", "alpha"}
	assert.Equal(t, []string{"alpha", "execd", "init", "logd", "oomd", "policyd", "samgrd", "zeta"}, p.EffectiveCritical())
}
