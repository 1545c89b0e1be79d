package policy

import (
	"fmt"
	"slices"
	"syscall"
	"testing"
)

// cpuNanos is the process's user+system CPU time. The benchmarks report it per op next
// to wall time: on a shared machine wall time also counts the time the benchmark was
// not running at all, CPU time does not (cache pollution by neighbours still shows).
func cpuNanos(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

var benchSizes = []int{10, 1_000, 100_000}

// benchCore registers n subjects and returns their ids in a fixed shuffled order:
// independent senders do not report in id order, and the 100 000 case should pay the
// cache misses a real flood would. The benchmarks build each Input from an id the way
// the shell builds it from an arriving message.
func benchCore(b *testing.B, n int) (*Core, []string) {
	b.Helper()
	p := DefaultPolicy()
	c, err := New(Config{Policy: p, RingSize: 1024})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("s%06d", i)
		if err := c.Step(Input{Kind: InputRegister, Subject: ids[i], Instance: 1}); err != nil {
			b.Fatal(err)
		}
	}
	x := uint64(0x9E3779B97F4A7C15)
	for i := n - 1; i > 0; i-- { // Fisher–Yates with a fixed xorshift sequence
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		j := int(x % uint64(i+1))
		ids[i], ids[j] = ids[j], ids[i]
	}
	// Warm up: two full rounds with a tick each, so the dirty list, the scratch slice
	// and the Ready buffers have their steady-state capacity.
	for range 2 {
		for _, id := range ids {
			if err := c.Step(sampleOf(id)); err != nil {
				b.Fatal(err)
			}
		}
		c.Tick()
		c.Ready()
		c.Advance()
	}
	return c, ids
}

// sampleOf is a steady sample below the soft limit, so ticks emit nothing.
func sampleOf(id string) Input {
	return Input{Kind: InputSample, Subject: id, Instance: 1, Claimed: id, Bytes: 1 << 20}
}

// BenchmarkSample is the cost of one memstat sample reaching the core: lookup,
// instance and claim checks, coalescing. One op = one Step(InputSample).
//
// order=shuffled is independent senders reporting in no particular order; at 100 000
// subjects it measures cache and TLB misses (the index, the slot and the id bytes are
// each a random access) more than the core. order=sorted is what the oomd shell does:
// it coalesces samples itself and feeds the core one sample per subject per tick, in
// subject-id order.
func BenchmarkSample(b *testing.B) {
	for _, n := range benchSizes {
		for _, order := range []string{"shuffled", "sorted"} {
			// by=id looks the subject up by id; by=slot passes the handle the shell got
			// from SlotOf at registration, as the oomd shell does.
			for _, by := range []string{"id", "slot"} {
				b.Run(fmt.Sprintf("subjects=%d/order=%s/by=%s", n, order, by), func(b *testing.B) {
					c, ids := benchCore(b, n)
					if order == "sorted" {
						slices.Sort(ids)
					}
					ins := make([]Input, len(ids))
					for i, id := range ids {
						ins[i] = sampleOf(id)
						if by == "slot" {
							ins[i].Slot = c.SlotOf(id)
						}
					}
					b.ReportAllocs()
					b.ResetTimer()
					cpu0 := cpuNanos(b)
					j := 0
					for range b.N {
						if err := c.Step(ins[j]); err != nil {
							b.Fatal(err)
						}
						j++
						if j == len(ins) {
							j = 0
						}
					}
					b.ReportMetric(float64(cpuNanos(b)-cpu0)/float64(b.N), "cpu-ns/op")
				})
			}
		}
	}
}

// BenchmarkTick is one full round as the shell drives it: every subject reports once
// (in id order), then one Tick evaluates them all. ns/subject is ns/op divided by the
// number of subjects.
func BenchmarkTick(b *testing.B) {
	for _, n := range benchSizes {
		// by=id looks every subject up by id; by=slot passes the handle from SlotOf, as
		// the oomd shell does for each page sample it reads on the tick.
		for _, by := range []string{"id", "slot"} {
			b.Run(fmt.Sprintf("subjects=%d/by=%s", n, by), func(b *testing.B) {
				c, ids := benchCore(b, n)
				slices.Sort(ids)
				ins := make([]Input, len(ids))
				for i, id := range ids {
					ins[i] = sampleOf(id)
					if by == "slot" {
						ins[i].Slot = c.SlotOf(id)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := cpuNanos(b)
				for range b.N {
					for i := range ins {
						if err := c.Step(ins[i]); err != nil {
							b.Fatal(err)
						}
					}
					c.Tick()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/subject")
				b.ReportMetric(float64(cpuNanos(b)-cpu0)/float64(b.N)/float64(n), "cpu-ns/subject")
			})
		}
	}
}
