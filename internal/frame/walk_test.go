package frame

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rec is a test payload that decodes only with its magic prefix, like a real record.
func rec(i int) []byte { return []byte(fmt.Sprintf("REC:%04d:%s", i, bytes.Repeat([]byte{'x'}, i%40))) }

func accepting(got *[]string) func(int64, []byte, bool) error {
	return func(_ int64, p []byte, _ bool) error {
		if !bytes.HasPrefix(p, []byte("REC:")) {
			return fmt.Errorf("%w: no magic", ErrReject)
		}
		*got = append(*got, string(p[:8]))
		return nil
	}
}

func build(n int) (buf []byte, starts []int64) {
	for i := range n {
		starts = append(starts, int64(len(buf)))
		buf = Append(buf, rec(i))
	}
	return buf, starts
}

func names(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("REC:%04d", i))
	}
	return out
}

func walk(t *testing.T, b []byte, o WalkOptions) ([]string, []Damage) {
	t.Helper()
	if o.MaxPayload == 0 {
		o.MaxPayload = 64
	}
	var got []string
	d, err := Walk(bytes.NewReader(b), int64(len(b)), o, accepting(&got))
	require.NoError(t, err)
	return got, d
}

func TestWalkIntact(t *testing.T) {
	buf, _ := build(20)
	got, d := walk(t, buf, WalkOptions{})
	assert.Empty(t, d)
	assert.Equal(t, names(0, 20), got)
}

// Every single flipped byte of a middle frame costs exactly that frame.
func TestWalkFlippedByteCostsOneFrame(t *testing.T) {
	buf, starts := build(20)
	for off := starts[10]; off < starts[11]; off++ {
		bad := bytes.Clone(buf)
		bad[off] ^= 0x20
		got, d := walk(t, bad, WalkOptions{})
		msg := fmt.Sprintf("byte %d of frame 10 flipped", off-starts[10])
		want := append(names(0, 10), names(11, 20)...)
		require.Equal(t, want, got, msg)
		require.Len(t, d, 1, msg)
		assert.Equal(t, starts[10], d[0].Off, msg)
		assert.Equal(t, starts[11], d[0].End, msg)
		assert.False(t, d[0].AtEnd, msg)
	}
}

func TestWalkTornAndCorruptTails(t *testing.T) {
	buf, starts := build(5)
	last := starts[4]
	for cut := last + 1; cut < int64(len(buf)); cut++ {
		got, d := walk(t, buf[:cut], WalkOptions{})
		require.Equal(t, names(0, 4), got, "cut %d", cut)
		require.Len(t, d, 1)
		assert.Equal(t, Damage{Off: last, End: cut, Cause: d[0].Cause, AtEnd: true, Torn: true}, d[0], "cut %d", cut)
		assert.ErrorIs(t, d[0].Cause, ErrTorn)
	}
	for _, tc := range []struct {
		name string
		tail []byte
		torn bool
	}{
		{"zeroed blocks", make([]byte, 4096), true},
		{"garbage", []byte("garbage after the last frame"), false},
	} {
		got, d := walk(t, append(bytes.Clone(buf), tc.tail...), WalkOptions{})
		require.Equal(t, names(0, 5), got, tc.name)
		require.Len(t, d, 1, tc.name)
		assert.Equal(t, tc.torn, d[0].Torn, tc.name)
		assert.True(t, d[0].AtEnd, tc.name)
	}
	// A complete last frame with a bad checksum is not torn: it was written whole.
	bad := bytes.Clone(buf)
	bad[len(bad)-1] ^= 1
	_, d := walk(t, bad, WalkOptions{})
	require.Len(t, d, 1)
	assert.False(t, d[0].Torn)
	assert.ErrorIs(t, d[0].Cause, ErrCorrupt)
}

// Random garbage (with valid frames spliced in) never yields a frame the accept
// function did not see whole: what comes back is exactly the spliced frames.
func TestWalkGarbageIsNotAccepted(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var buf []byte
	var want []string
	for i := range 50 {
		junk := make([]byte, r.IntN(3000))
		for j := range junk {
			junk[j] = byte(r.IntN(256))
			if r.IntN(4) == 0 {
				junk[j] = 0 // small lengths are the likely false headers
			}
		}
		buf = append(buf, junk...)
		buf = Append(buf, rec(i))
		want = append(want, fmt.Sprintf("REC:%04d", i))
	}
	got, d := walk(t, buf, WalkOptions{})
	assert.Equal(t, want, got)
	assert.NotEmpty(t, d)

	// A frame that is intact but rejected is damage, and the walk resumes after it.
	b2, starts := build(6)
	b2 = append(b2[:starts[3]:starts[3]], append(Append(nil, []byte("NOPE")), b2[starts[3]:]...)...)
	got, d = walk(t, b2, WalkOptions{})
	assert.Equal(t, names(0, 6), got)
	require.Len(t, d, 1)
	assert.ErrorIs(t, d[0].Cause, ErrReject)
}

func TestWalkBudgetBoundsTheScan(t *testing.T) {
	buf, starts := build(20)
	bad := bytes.Clone(buf)
	// Lengths of 64 at every offset of frame 2's payload make every candidate cost 64
	// hashed bytes.
	for off := starts[2]; off+4 < starts[3]; off += 4 {
		bad[off], bad[off+1], bad[off+2], bad[off+3] = 64, 0, 0, 0
	}
	got, d := walk(t, bad, WalkOptions{ResyncBudget: 100})
	assert.Equal(t, names(0, 2), got, "nothing after the budget ran out is trusted")
	require.Len(t, d, 1)
	assert.True(t, d[0].Exhausted)
	assert.True(t, d[0].AtEnd)
	assert.False(t, d[0].Torn)

	got, _ = walk(t, bad, WalkOptions{})
	assert.Equal(t, append(names(0, 2), names(3, 20)...), got, "with the default budget the scan finds frame 3")
}

func TestWalkStopsOnAcceptError(t *testing.T) {
	buf, _ := build(3)
	boom := errors.New("boom")
	_, err := Walk(bytes.NewReader(buf), int64(len(buf)), WalkOptions{MaxPayload: 64}, func(int64, []byte, bool) error { return boom })
	assert.ErrorIs(t, err, boom)
}
