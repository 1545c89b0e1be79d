package wire

import (
	"fmt"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

func newPolicyMsg(t *testing.T) oomdpb.Policy {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	p, err := oomdpb.NewRootPolicy(seg)
	require.NoError(t, err)
	return p
}

func TestPolicyRoundTrip(t *testing.T) {
	want := policy.DefaultPolicy()
	want.Critical = []string{"db"}
	want.Overrides = []policy.SubjectLimit{{Subject: "hog", SoftBytes: 1, HardBytes: 2}}
	want.Levels = policy.LevelThresholds{WarningBytes: 300, ImminentOOMBytes: 200, OOMBytes: 100, HysteresisBytes: 10}
	want.OOMTimeoutMs = 5000
	m := newPolicyMsg(t)
	require.NoError(t, SetPolicy(m, want))
	got, err := Policy(m)
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestPolicyFromWireIsValidatedWhole(t *testing.T) {
	p := policy.DefaultPolicy()
	p.HardBytes = p.SoftBytes - 1
	m := newPolicyMsg(t)
	require.NoError(t, SetPolicy(m, p))
	_, err := Policy(m)
	var ve *policy.ValidationError
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, "hardBytes", ve.Field)
}

func TestPolicyFromWireBoundsListsBeforeReadingThem(t *testing.T) {
	m := newPolicyMsg(t)
	l, err := m.NewCritical(policy.MaxCritical + 1)
	require.NoError(t, err)
	for i := 0; i < l.Len(); i++ {
		require.NoError(t, l.Set(i, fmt.Sprintf("s%d", i)))
	}
	_, err = Policy(m)
	var ve *policy.ValidationError
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, "critical", ve.Field)
}

func TestEventRoundTrip(t *testing.T) {
	evs := []policy.Event{
		{Seq: 1, Tick: 2, Subject: "hog", Kind: policy.EventKilled, Bytes: 3, Limit: 4, Reason: "signal=15", Decision: 5},
		{Seq: 2, Tick: 2, Kind: policy.EventPolicyChanged, Reason: "version=2"},
	}
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	l, err := NewEventList(seg, evs)
	require.NoError(t, err)
	got, err := Events(l)
	require.NoError(t, err)
	assert.Equal(t, evs, got)
}

func TestPolicyDryRunRoundTrip(t *testing.T) {
	on, off := true, false
	want := policy.DefaultPolicy()
	want.DryRun = true
	want.Overrides = []policy.SubjectLimit{{Subject: "db", SoftBytes: 1 << 20, HardBytes: 2 << 20, DryRun: &off},
		{Subject: "web", SoftBytes: 1 << 20, HardBytes: 2 << 20, DryRun: &on}, {Subject: "x", SoftBytes: 1 << 20, HardBytes: 2 << 20}}
	m := newPolicyMsg(t)
	require.NoError(t, SetPolicy(m, want))
	got, err := Policy(m)
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestPolicyVictimsRoundTrip(t *testing.T) {
	want := policy.DefaultPolicy()
	want.Victims = policy.Victims{Level: policy.VictimLevelWarning, PreferPoints: 700, AvoidPoints: 200, SettleTicks: 25, DryRun: true,
		Prefer: []string{"cache"}, Avoid: []string{"db", "web"}, Never: []string{"sshd"}}
	m := newPolicyMsg(t)
	require.NoError(t, SetPolicy(m, want))
	got, err := Policy(m)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	// Unset stays unset: an old peer's policy and the defaults read the same.
	m = newPolicyMsg(t)
	require.NoError(t, SetPolicy(m, policy.DefaultPolicy()))
	assert.False(t, m.HasVictims())
	got, err = Policy(m)
	require.NoError(t, err)
	assert.Equal(t, policy.DefaultPolicy(), got)
}

func TestPolicyVictimsFromWireValidated(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(v oomdpb.Victims)
		field string
	}{
		{"unknown level", func(v oomdpb.Victims) { v.SetLevel(9) }, "victims.level"},
		{"points", func(v oomdpb.Victims) { v.SetAvoidPoints(policy.MaxVictimPoints + 1) }, "victims.avoidPoints"},
		{"twice", func(v oomdpb.Victims) {
			p, _ := v.NewPrefer(1)
			require.NoError(t, p.Set(0, "db"))
			n, _ := v.NewNever(1)
			require.NoError(t, n.Set(0, "db"))
		}, "victims.never[0]"},
		{"list bound before reading", func(v oomdpb.Victims) {
			l, err := v.NewAvoid(policy.MaxVictimList + 1)
			require.NoError(t, err)
			for i := 0; i < l.Len(); i++ {
				require.NoError(t, l.Set(i, fmt.Sprintf("s%d", i)))
			}
		}, "victims.avoid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newPolicyMsg(t)
			require.NoError(t, SetPolicy(m, policy.DefaultPolicy()))
			v, err := m.NewVictims()
			require.NoError(t, err)
			tc.edit(v)
			_, err = Policy(m)
			var ve *policy.ValidationError
			require.ErrorAs(t, err, &ve, tc.name)
			assert.Equal(t, tc.field, ve.Field, tc.name)
		})
	}
}

func TestHandoffPreference(t *testing.T) {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	h, err := oomdpb.NewRootSubjectHandoff(seg)
	require.NoError(t, err)
	got, err := HandoffPreference(h)
	require.NoError(t, err)
	assert.Equal(t, policy.PreferenceNone, got, "an old execd's handoff")
	for _, p := range []oomdpb.Preference{oomdpb.Preference_prefer, oomdpb.Preference_avoid, oomdpb.Preference_never} {
		h.SetPreference(p)
		got, err := HandoffPreference(h)
		require.NoError(t, err)
		assert.Equal(t, p.String(), got.String())
	}
	h.SetPreference(7)
	_, err = HandoffPreference(h)
	assert.ErrorContains(t, err, "handoff.preference: unknown value 7")
}

// TestEnumsMirrorSchema: the core's enums equal the schema's value for value, so the
// shell converts them with a plain cast.
func TestEnumsMirrorSchema(t *testing.T) {
	for k := policy.EventKind(0); k.String() != "unknown"; k++ {
		assert.Equal(t, k.String(), oomdpb.EventKind(k).String(), "event kind %d", k)
	}
	for p := policy.Preference(0); p.String() != "unknown"; p++ {
		assert.Equal(t, p.String(), oomdpb.Preference(p).String(), "preference %d", p)
	}
	for l := policy.VictimLevel(0); l.String() != "unknown"; l++ {
		assert.Equal(t, l.String(), oomdpb.VictimLevel(l).String(), "victim level %d", l)
	}
	assert.Equal(t, "victimWouldKill", oomdpb.EventKind(policy.EventVictimWouldKill).String())
}
