package page

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readWithin runs one Read on another goroutine and fails the test if it does not
// return within d: a reader that waits for a writer would hang here.
func readWithin(t *testing.T, r *Reader, d time.Duration) (Sample, Status) {
	t.Helper()
	type res struct {
		s  Sample
		st Status
	}
	got := make(chan res, 1)
	go func() { s, st := r.Read(); got <- res{s, st} }()
	select {
	case x := <-got:
		return x.s, x.st
	case <-time.After(d):
		t.Fatalf("Read did not return within %v", d)
		return Sample{}, 0
	}
}

// TestGarbage: random bytes everywhere in the page, with and without a valid header.
// Read never faults or loops, and an OK sample is exactly the words on the page.
func TestGarbage(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	mem := scribbler(t, rw)
	rng := rand.New(rand.NewPCG(1, 2))
	counts := map[Status]int{}
	for i := 0; i < 20000; i++ {
		for j := 0; j < PageSize; j += 8 {
			binary.LittleEndian.PutUint64(mem[j:], rng.Uint64())
		}
		switch i % 4 {
		case 1: // valid header, random rest
			binary.LittleEndian.PutUint64(mem[0:], magicVersion)
		case 2: // valid magic, random version
			binary.LittleEndian.PutUint32(mem[OffMagic:], Magic)
		case 3: // valid header, even sequence: a value any writer could have written
			binary.LittleEndian.PutUint64(mem[0:], magicVersion)
			mem[OffSeq] &^= 1
		}
		s, st := r.Read()
		counts[st]++
		word := func(off int) uint64 { return binary.LittleEndian.Uint64(mem[off:]) }
		switch i % 4 {
		case 0:
			require.Equal(t, BadMagic, st, "iteration %d", i)
		case 1:
			if word(OffSeq)&1 != 0 {
				require.Equal(t, Torn, st, "iteration %d: odd sequence", i)
			}
		case 2:
			require.Equal(t, BadVersion, st, "iteration %d", i)
		}
		if st == OK || st == Closed {
			require.Equal(t, Sample{Bytes: word(OffBytes), Counter: word(OffCounter), Seq: word(OffSeq)}, s, "iteration %d", i)
			require.Equal(t, st == Closed, word(OffFlags)&FlagClosed != 0, "iteration %d", i)
		}
	}
	t.Logf("statuses over random pages: %v", counts)
	assert.NotZero(t, counts[OK])
	assert.NotZero(t, counts[Closed])
	assert.NotZero(t, counts[Torn])
}

// TestStuckOddSequence: a writer that starts a cycle and never finishes it (here
// in-process, then a real process that then exits mid-write). The reader gives up
// after MaxReadRetries at once, keeps the last good sample, and recovers when the
// page is written properly again.
func TestStuckOddSequence(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	w, err := NewWriter(rw)
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, w.Publish(100))
	s, st := r.Read()
	require.Equal(t, OK, st)

	seq, ok := w.acquire()
	require.True(t, ok)
	atomic.StoreUint64(&w.h.bytes, 1<<50)
	start := time.Now()
	for i := 0; i < 10000; i++ {
		got, st := readWithin(t, r, 5*time.Second)
		require.Equal(t, Torn, st)
		require.Equal(t, s, got, "the last good sample")
	}
	t.Logf("10 000 reads of a stuck page took %v", time.Since(start))
	atomic.StoreUint64(&w.h.seq, seq+1) // finish the cycle (no counter raise: Unchanged is fine too)
	got, st := r.Read()
	assert.Equal(t, OK, st)
	assert.Equal(t, uint64(1<<50), got.Bytes)

	// A real process takes the page, stops mid-cycle, and exits without finishing.
	c := startChild(t, "stall", rw)
	c.expect("held ")
	_, st = readWithin(t, r, 5*time.Second)
	assert.Equal(t, Torn, st)
	assert.ErrorIs(t, w.Publish(1), ErrBusy, "an honest writer gives up instead of spinning")
	require.NoError(t, c.wait())
	got, st = readWithin(t, r, 5*time.Second)
	assert.Equal(t, Torn, st, "the dead writer's half cycle stays torn")
	assert.Equal(t, uint64(1<<50), got.Bytes, "last good sample kept")
}

// TestWriterUnmapsAndExits: a writer process that unmaps the page mid-cycle and exits.
// oomd's mapping stays valid (the memfd lives while any fd or mapping does, and cannot
// shrink): the reader sees a torn page, not a fault.
func TestWriterUnmapsAndExits(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	c := startChild(t, "unmap", rw)
	require.NoError(t, ro.Close())
	require.NoError(t, rw.Close()) // the child's fd 3 and oomd's mapping are all that is left
	c.expect("unmapped")
	require.NoError(t, c.wait())
	_, st := readWithin(t, r, 5*time.Second)
	assert.Equal(t, Torn, st)
}

// TestConcurrentWriters: several goroutines and a separate process publish at full
// speed, each value tied to its counter and writer id, while the reader reads. Every OK
// sample must be one a writer wrote in a single cycle, and the counter never goes back.
func TestConcurrentWriters(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()

	const goroutines = 3
	const childID = goroutines + 1
	c := startChild(t, "publish", rw, envWriterID+"=4")
	c.expect("publishing")

	w, err := NewWriter(rw)
	require.NoError(t, err)
	defer w.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var busy atomic.Uint64
	for id := uint64(1); id <= goroutines; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if w.publish(func(c uint64) uint64 { return checked(id, c) }) == ErrBusy {
					busy.Add(1)
				}
			}
		}()
	}

	seen := map[uint64]int{}
	counts := map[Status]int{}
	var last Sample
	end := time.Now().Add(deadline)
	for reads := 0; ; reads++ {
		s, st := r.Read()
		counts[st]++
		if st == OK {
			id := checkedID(s)
			require.True(t, id >= 1 && id <= childID, "torn sample reported OK: %+v (id %d)", s, id)
			require.Greater(t, s.Counter, last.Counter, "counter went back")
			require.Greater(t, s.Seq, last.Seq, "sequence went back")
			require.Zero(t, s.Seq&1)
			seen[id]++
			last = s
		}
		if reads >= 200000 && len(seen) == childID || time.Now().After(end) {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	require.NoError(t, c.wait())
	t.Logf("statuses: %v; OK samples per writer: %v; goroutine publishes that found the page busy: %d", counts, seen, busy.Load())
	assert.Len(t, seen, childID, "every writer, the other process included, was read at least once")
	assert.NotZero(t, counts[OK])
}
