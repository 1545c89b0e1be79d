package loopwait

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// deadline bounds each wait; it is a failure bound, not a timing assertion.
const deadline = 10 * time.Second

// testWaiter is a waiter with a deadline clock of its own: a Wait that would hang ends
// when it expires, and the test fails.
type testWaiter struct {
	*Waiter
	deadline Timer
}

func newWaiter(t *testing.T) testWaiter {
	t.Helper()
	w, err := New()
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	dl, err := w.NewTimer()
	require.NoError(t, err)
	return testWaiter{w, dl}
}

func wait(t *testing.T, w testWaiter) Fired {
	t.Helper()
	require.NoError(t, w.After(w.deadline, deadline))
	f, err := w.Wait()
	require.NoError(t, err)
	require.False(t, f.Has(w.deadline), "nothing ended the Wait within %v", deadline)
	require.NoError(t, w.Stop(w.deadline))
	return f &^ (1 << w.deadline)
}

// twoClocks arms a clock every period and one once after delay.
func twoClocks(t *testing.T, w testWaiter, period, delay time.Duration) (every, once Timer) {
	t.Helper()
	every, err := w.NewTimer()
	require.NoError(t, err)
	once, err = w.NewTimer()
	require.NoError(t, err)
	require.NoError(t, w.Every(every, period))
	require.NoError(t, w.After(once, delay))
	return every, once
}

func TestClocksExpire(t *testing.T) {
	w := newWaiter(t)
	every, once := twoClocks(t, w, time.Millisecond, 2*time.Millisecond)
	armed, period, err := w.Armed(every)
	require.NoError(t, err)
	assert.True(t, armed)
	assert.Equal(t, time.Millisecond, period)
	seen := map[Timer]int{}
	for seen[every] < 5 || seen[once] < 1 {
		f := wait(t, w)
		for _, tm := range []Timer{every, once} {
			if f.Has(tm) {
				seen[tm]++
			}
		}
	}
	assert.Equal(t, 1, seen[once], "a one-shot clock expires once")
	armed, _, err = w.Armed(once)
	require.NoError(t, err)
	assert.False(t, armed, "a one-shot clock that expired")
	require.NoError(t, w.Stop(every))
	armed, _, err = w.Armed(every)
	require.NoError(t, err)
	assert.False(t, armed, "a stopped clock")
	w.Ring()
	assert.Equal(t, Fired(1<<bellID), wait(t, w), "a stopped clock is not reported")
}

// An expiry that was not collected before Stop is forgotten: the halt bound, stopped
// because the outcome came, must not fire afterwards.
func TestStopForgetsAnUncollectedExpiry(t *testing.T) {
	w := newWaiter(t)
	tm, err := w.NewTimer()
	require.NoError(t, err)
	require.NoError(t, w.After(tm, time.Microsecond))
	// Wait (with a deadline) until the kernel says it expired, without collecting it.
	end := time.Now().Add(deadline)
	for {
		armed, _, err := w.Armed(tm)
		require.NoError(t, err)
		if !armed {
			break
		}
		require.True(t, time.Now().Before(end), "the clock never expired")
		time.Sleep(100 * time.Microsecond) // polling a kernel clock, not synchronising goroutines
	}
	require.NoError(t, w.Stop(tm))
	w.Ring()
	f := wait(t, w)
	assert.True(t, f.Rang())
	assert.False(t, f.Has(tm), "an expiry from before Stop was reported")
}

// The protocol in the package comment: senders queue, then ring; the loop takes all that
// is queued each time the bell rang. No item may be left waiting.
func TestNoRingIsLost(t *testing.T) {
	w := newWaiter(t)
	const senders, each = 8, 2000
	q := make(chan int, 16) // small: senders block on a full queue too
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				q <- s*each + i
				w.Ring()
			}
		}()
	}
	got := 0
	for got < senders*each {
		f := wait(t, w)
		require.True(t, f.Rang())
		for taking := true; taking; {
			select {
			case <-q:
				got++
			default:
				taking = false
			}
		}
	}
	wg.Wait()
	assert.Equal(t, senders*each, got)
}

func TestRingAfterCloseTouchesNoOtherFile(t *testing.T) {
	w, err := New()
	require.NoError(t, err)
	bellfd := w.bellfd
	require.NoError(t, w.Close())
	// The lowest free numbers are the waiter's old ones: an eventfd now likely holds the
	// bell's number. A Ring that wrote to the old number would count in it.
	var fds []int
	for range 4 {
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		require.NoError(t, err)
		fds = append(fds, fd)
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	require.Contains(t, fds, bellfd, "the bell's number was not reused; the test proves nothing")
	w.Ring()
	var b [8]byte
	for _, fd := range fds {
		_, err := unix.Read(fd, b[:])
		assert.ErrorIs(t, err, unix.EAGAIN, "a Ring after Close wrote to fd %d", fd)
	}
}

func TestWaitAfterCloseFails(t *testing.T) {
	w, err := New()
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = w.Wait()
	assert.ErrorContains(t, err, "closed")
}

func TestBadClocks(t *testing.T) {
	w := newWaiter(t)
	tm, err := w.NewTimer()
	require.NoError(t, err)
	assert.ErrorContains(t, w.Every(tm, 0), "must be positive")
	assert.ErrorContains(t, w.After(tm, -time.Second), "must be positive")
	assert.ErrorContains(t, w.Stop(tm+1), "no clock 2")
	for range MaxTimers - 2 {
		_, err := w.NewTimer()
		require.NoError(t, err)
	}
	_, err = w.NewTimer()
	assert.ErrorContains(t, err, "more than 8 clocks")
}

// A Wait that a clock ends allocates nothing: it runs on every tick of an idle oomd.
func TestWaitAllocatesNothing(t *testing.T) {
	w := newWaiter(t)
	tm, err := w.NewTimer()
	require.NoError(t, err)
	require.NoError(t, w.Every(tm, 100*time.Microsecond))
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := w.Wait(); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// TestAWaitReadsOnlyWhatIsDue: a Wait reads the clocks that are due and the bell when
// it was rung, nothing else: not the deadline clock (armed for 10 s), not the bell
// before a ring. A Wait that starts before its clock is due goes to the netpoller
// without a read.
func TestAWaitReadsOnlyWhatIsDue(t *testing.T) {
	w := newWaiter(t)
	tm, err := w.NewTimer()
	require.NoError(t, err)
	require.NoError(t, w.Every(tm, 50*time.Millisecond)) // a Wait starts long before the next expiry
	for range 5 {
		before := w.reads
		f := wait(t, w)
		require.True(t, f.Has(tm))
		// One read; two only if a Wait began in the microseconds between the guess and
		// the kernel's expiry (the first then finds nothing).
		assert.Contains(t, []uint64{1, 2}, w.reads[tm]-before[tm], "reads of the due clock in one Wait")
		assert.Equal(t, before[w.deadline], w.reads[w.deadline], "the clock not due was read")
		assert.Equal(t, before[bellID], w.reads[bellID], "the bell was read, not rung")
	}
	w.Ring()
	before := w.reads
	f := wait(t, w)
	require.True(t, f.Rang())
	assert.Equal(t, uint64(1), w.reads[bellID]-before[bellID], "the rung bell, once")
}

// TestDueIsNeverAfterTheKernelsExpiry: what the waiter expects of a clock is never later
// than what the kernel will do; a later guess could skip the poll that finds an expiry.
func TestDueIsNeverAfterTheKernelsExpiry(t *testing.T) {
	w := newWaiter(t)
	every, once := twoClocks(t, w, time.Millisecond, 30*time.Millisecond)
	check := func(tm Timer) {
		t.Helper()
		var cur unix.ItimerSpec
		require.NoError(t, unix.TimerfdGettime(w.timers[tm], &cur))
		latest := time.Now().Add(time.Duration(cur.Value.Nano())) // no earlier than the kernel's next expiry
		due := w.clocks[tm].due
		if cur.Value.Nano() == 0 {
			// Expired (since the Wait) and not yet read, or never to expire again.
			assert.True(t, due.IsZero() || !due.After(time.Now()), "clock %d: no expiry is coming, yet one is due at %v", tm, due)
			return
		}
		assert.False(t, due.After(latest), "clock %d: due %v after the kernel's next expiry (by %v)", tm, due, due.Sub(latest))
	}
	for range 200 {
		wait(t, w)
		check(every)
		check(once)
		if w.reads[every]%7 == 0 {
			time.Sleep(3 * time.Millisecond) // a loop that falls behind: the kernel counts the missed expiries
		}
	}
}

// TestARingBeforeTheWaitIsFound: the netpoller may see the bell's edge before the Wait
// starts, and a Wait forgets readiness seen before it; the ring must be found by its
// count. (The pause lets the runtime poll the network: sysmon does when nobody has for
// 10 ms. It is not synchronisation; without it the test only gets easier.)
func TestARingBeforeTheWaitIsFound(t *testing.T) {
	w := newWaiter(t)
	for range 3 {
		w.Ring()
		time.Sleep(30 * time.Millisecond)
		assert.True(t, wait(t, w).Rang())
	}
}

// TestTheBellIsNotInTheRuntimesEpoll: the bell is written through os.File but not
// registered in the netpoller (each read of it would post a spurious EPOLLOUT wake-up
// there), and it is non-blocking (the loop's raw read must never block).
func TestTheBellIsNotInTheRuntimesEpoll(t *testing.T) {
	w := newWaiter(t)
	assert.ErrorIs(t, w.bell.SetReadDeadline(time.Now()), os.ErrNoDeadline, "a pollable bell")
	fl, err := unix.FcntlInt(uintptr(w.bellfd), unix.F_GETFL, 0)
	require.NoError(t, err)
	assert.NotZero(t, fl&unix.O_NONBLOCK, "a blocking bell")
}
