package frame

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRoundTripAndEveryTruncation(t *testing.T) {
	var buf []byte
	payloads := [][]byte{[]byte("a"), []byte("hello"), bytes.Repeat([]byte{7}, 300)}
	var ends []int64
	for _, p := range payloads {
		buf = Append(buf, p)
		ends = append(ends, int64(len(buf)))
	}
	r := NewReader(bytes.NewReader(buf), 1024)
	for i, p := range payloads {
		got, err := r.Next()
		require.NoError(t, err)
		assert.Equal(t, p, got)
		assert.Equal(t, ends[i], r.Offset())
	}
	_, err := r.Next()
	assert.Equal(t, io.EOF, err)

	// Cut at every byte: the intact frames come back, then io.EOF at a frame boundary or
	// ErrTorn inside one; Offset is the last intact end.
	for cut := 0; cut <= len(buf); cut++ {
		r := NewReader(bytes.NewReader(buf[:cut]), 1024)
		n := 0
		for {
			_, err := r.Next()
			if err == nil {
				n++
				continue
			}
			atBoundary := cut == 0 || (n > 0 && ends[n-1] == int64(cut))
			if atBoundary {
				assert.Equal(t, io.EOF, err, "cut %d", cut)
			} else {
				assert.ErrorIs(t, err, ErrTorn, "cut %d", cut)
			}
			break
		}
		wantOff := int64(0)
		for _, e := range ends {
			if e <= int64(cut) {
				wantOff = e
			}
		}
		assert.Equal(t, wantOff, r.Offset(), "cut %d", cut)
	}
}

func TestCorruption(t *testing.T) {
	buf := Append(Append(nil, []byte("first")), []byte("second"))
	bad := bytes.Clone(buf)
	bad[len(bad)-1] ^= 0xff // payload bit flip in the second frame
	r := NewReader(bytes.NewReader(bad), 1024)
	_, err := r.Next()
	require.NoError(t, err)
	_, err = r.Next()
	assert.True(t, errors.Is(err, ErrCorrupt), "%v", err)
	assert.Equal(t, int64(HeaderBytes+5), r.Offset())

	r = NewReader(bytes.NewReader(buf), 4) // "first" is larger than the maximum
	_, err = r.Next()
	assert.ErrorIs(t, err, ErrCorrupt)
	assert.Zero(t, r.Offset())
}
