package kernel

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/testutil"
	"oomd.dev/oomd/services/execd-stub/cgroup"
)

// near: two readings of an idle subject taken a moment apart.
func near(t *testing.T, want, got uint64, what string) {
	t.Helper()
	const slack = 1 << 20
	assert.True(t, got+slack >= want && got <= want+slack, "%s: %d, a plain Read says %d", what, got, want)
}

// A batch gives each subject the reading Reader.Read gives, for every mode this machine
// has (cgroup and proc mode mixed in one batch), with one io_uring_enter for all the
// cgroup counters, or a pread each without the ring.
func TestABatchReadsWhatReadReads(t *testing.T) {
	var readers []*Reader
	cgroups := 0
	for _, m := range managers(t) {
		for i := range 3 {
			g, err := m.Create(fmt.Sprintf("batch%d", i), 1)
			require.NoError(t, err)
			start(t, g, fmt.Sprintf("python3 -c 'import time; b=bytearray(%d<<20); time.sleep(300)'", 4+4*i))
			readers = append(readers, readerFor(t, g))
			if m.Mode() != cgroup.ModeProc {
				cgroups++
			}
		}
	}
	items := make([]Item, len(readers))
	for i, r := range readers {
		items[i] = Item{Reader: r, DetailAbove: math.MaxUint64}
	}
	// Each subject at its full size first (the plain reads agree from then on).
	for i, r := range readers {
		want := uint64(4+4*(i%3)) << 20
		testutil.Eventually(t, deadline, func() (uint64, bool) { v, err := r.Read(math.MaxUint64); return v, err == nil && v >= want },
			fmt.Sprintf("subject %d at its size", i))
	}
	for _, noRing := range []bool{false, true} {
		t.Run(fmt.Sprintf("noRing=%t", noRing), func(t *testing.T) {
			b := NewBatch(noRing)
			defer b.Close()
			if noRing {
				require.ErrorIs(t, b.Fallback(), errNoRing)
			} else {
				require.NoError(t, b.Fallback(), "io_uring is available on this machine and in CI")
			}
			require.NoError(t, b.Read(items))
			for i, it := range items {
				require.NoError(t, it.Err)
				want, err := it.Reader.Read(math.MaxUint64)
				require.NoError(t, err)
				near(t, want, it.Bytes, fmt.Sprintf("subject %d (%s)", i, it.Reader.Mode()))
			}
			enters, preads := b.Calls()
			if noRing {
				assert.Equal(t, [2]uint64{0, uint64(cgroups)}, [2]uint64{enters, preads}, "enters, preads")
			} else {
				assert.Equal(t, [2]uint64{1, 0}, [2]uint64{enters, preads}, "enters, preads")
			}
		})
	}
}

// Above DetailAbove an item is the working set, as Read's: memory.stat is read after
// the batch, for that subject alone.
func TestABatchItemAboveItsThresholdIsTheWorkingSet(t *testing.T) {
	for _, m := range managers(t) {
		if m.Mode() == cgroup.ModeProc {
			continue
		}
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("detail", 1)
			require.NoError(t, err)
			start(t, g, "python3 -c 'import time; b=bytearray(8<<20); time.sleep(300)'")
			r := readerFor(t, g)
			testutil.Eventually(t, deadline, func() (uint64, bool) { v, _ := r.Read(math.MaxUint64); return v, v >= 8<<20 }, "8 MiB counted")
			b := NewBatch(false)
			defer b.Close()
			items := []Item{{Reader: r, DetailAbove: math.MaxUint64}, {Reader: r, DetailAbove: 0}}
			require.NoError(t, b.Read(items))
			ws, err := r.Read(0)
			require.NoError(t, err)
			near(t, ws, items[1].Bytes, "working set")
			assert.LessOrEqual(t, items[1].Bytes, items[0].Bytes, "the working set is at most the usage")
		})
	}
}

// A subject whose counter cannot be read fails alone; more subjects than one ring takes
// make one enter per batchSize, and each item gets its own subject's reading across the
// chunks (two subjects of different sizes, alternating).
func TestABatchFailsOneItemAloneAndChunks(t *testing.T) {
	var m *cgroup.Manager
	for _, c := range managers(t) {
		if c.Mode() != cgroup.ModeProc {
			m = c
		}
	}
	if m == nil {
		t.Fatal("no writable cgroup hierarchy on this machine (the host has v1 memory, the VM v2)")
	}
	var readers [2]*Reader
	var want [2]uint64
	for i, mib := range []int{4, 12} {
		g, err := m.Create(fmt.Sprintf("chunk%d", i), 1)
		require.NoError(t, err)
		start(t, g, fmt.Sprintf("python3 -c 'import time; b=bytearray(%d<<20); time.sleep(300)'", mib))
		r := readerFor(t, g)
		testutil.Eventually(t, deadline, func() (uint64, bool) { v, _ := r.Read(math.MaxUint64); return v, v >= uint64(mib)<<20 },
			fmt.Sprintf("%d MiB counted", mib))
		readers[i] = r
	}
	g, err := m.Create("chunkbad", 1)
	require.NoError(t, err)
	t.Cleanup(func() { g.Remove() })
	bad := readerFor(t, g)
	bad.usageFd = 1 << 20 // no such fd
	items := make([]Item, batchSize+3)
	for i := range items {
		items[i] = Item{Reader: readers[i%2], DetailAbove: math.MaxUint64}
	}
	items[batchSize+1].Reader = bad
	b := NewBatch(false)
	defer b.Close()
	require.NoError(t, b.Read(items))
	enters, _ := b.Calls()
	assert.Equal(t, uint64(2), enters, "one enter per %d subjects", batchSize)
	for i, r := range readers {
		var err error
		want[i], err = r.Read(math.MaxUint64)
		require.NoError(t, err)
	}
	for i, it := range items {
		if i == batchSize+1 {
			assert.ErrorContains(t, it.Err, "read usage: bad file descriptor")
			continue
		}
		require.NoError(t, it.Err, "item %d", i)
		near(t, want[i%2], it.Bytes, fmt.Sprintf("item %d", i))
	}
}

// BenchmarkBatchCgroups is BenchmarkReadCgroups' tick read as a batch: ns/op is per
// subject, as there, so the two compare directly.
func BenchmarkBatchCgroups(b *testing.B) {
	for _, n := range []int{3, 100, 1000, 10000} {
		for _, m := range managers(b) {
			if m.Mode() == cgroup.ModeProc {
				continue
			}
			items := make([]Item, n)
			for i := range items {
				g, err := m.Create(fmt.Sprintf("batchbench%d", i), 1)
				require.NoError(b, err)
				b.Cleanup(func() { g.Remove() })
				u, err := g.OpenUsage()
				require.NoError(b, err)
				u.Stat.Close()
				r, err := New(Mode(g.Mode()), u.Usage, nil)
				require.NoError(b, err)
				b.Cleanup(r.Close)
				items[i] = Item{Reader: r, DetailAbove: math.MaxUint64}
			}
			for _, noRing := range []bool{true, false} {
				name := map[bool]string{true: "pread", false: "uring"}[noRing]
				b.Run(fmt.Sprintf("%s/subjects=%d/%s", m.Mode(), n, name), func(b *testing.B) {
					bt := NewBatch(noRing)
					defer bt.Close()
					b.ReportAllocs()
					for b.Loop() {
						if err := bt.Read(items); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/subject")
				})
			}
		}
	}
}
