package page

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNoAllocation: oomd reads every page on every tick, and a subject may publish as
// often as it likes; neither side allocates.
func TestNoAllocation(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	w, err := NewWriter(rw)
	require.NoError(t, err)
	defer w.Close()
	v := uint64(0)
	assert.Zero(t, testing.AllocsPerRun(1000, func() { v++; _ = w.Publish(v) }), "Publish")
	assert.Zero(t, testing.AllocsPerRun(1000, func() { r.Read() }), "Read, unchanged")
	assert.Zero(t, testing.AllocsPerRun(1000, func() { v++; _ = w.Publish(v); r.Read() }), "Read, new sample")
}

func BenchmarkPublish(b *testing.B) {
	rw, err := Create("bench")
	require.NoError(b, err)
	defer rw.Close()
	w, err := NewWriter(rw)
	require.NoError(b, err)
	defer w.Close()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = w.Publish(uint64(i))
	}
}

func BenchmarkRead(b *testing.B) {
	r, w := benchPage(b)
	require.NoError(b, w.Publish(1))
	b.ReportAllocs()
	for b.Loop() {
		r.Read()
	}
}

// BenchmarkReadMany reads n pages in a loop, as oomd's tick does; ns/page is the cost
// per subject. The pages were written once, so each Read after the first pass is
// Unchanged, the common case at a 10 Hz tick; the lines stay in the CPU caches between
// passes, so this is the warm cost.
func BenchmarkReadMany(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			readers := make([]*Reader, n)
			for i := range readers {
				var w *Writer
				readers[i], w = benchPage(b)
				require.NoError(b, w.Publish(uint64(i)))
			}
			b.ReportAllocs()
			for b.Loop() {
				for _, r := range readers {
					if _, st := r.Read(); st != OK && st != Unchanged {
						b.Fatalf("status %v", st)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/page")
		})
	}
}

// benchPage makes a page with a reader and a writer; the fds are closed at once (the
// mappings stay), so 10 000 pages cost mappings, not fds.
func benchPage(b *testing.B) (*Reader, *Writer) {
	rw, err := Create("bench")
	require.NoError(b, err)
	defer rw.Close()
	ro, err := ReadOnly(rw)
	require.NoError(b, err)
	defer ro.Close()
	r, err := NewReader(ro)
	require.NoError(b, err)
	w, err := NewWriter(rw)
	require.NoError(b, err)
	b.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}
