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
	assert.Equal(t, "seq=1 tick=2 killed subject=hog bytes=3 limit=4 decision=5 reason=signal=15", FormatEvent(evs[0]))
}
