// Package loopwait is what oomd's owner loop sleeps on: its clocks (timerfds on
// CLOCK_MONOTONIC) and a doorbell (an eventfd) that other goroutines ring when they hand
// the loop work, gathered in one epoll set. The loop's own goroutine waits on that set's
// fd in the Go netpoller, so a tick wakes exactly one thread and runs no other goroutine
// first.
//
// The alternatives cost more at idle (docs/perf.md, "Idle cost beside earlyoom"): a
// time.Ticker lives in the runtime's timer heap, and the runtime's sysmon thread wakes
// for every timer besides the thread that runs it; a timerfd read by a goroutine of its
// own must hand each tick to the loop over a channel, and with two Ps that hand-off wakes
// a second thread (wakep) that finds nothing to do. Here the loop reads its timers
// itself, with raw system calls (internal/rawsys), so sysmon sleeps through the ticks.
//
// Work handed to the loop travels on the caller's own channels; Ring only says that
// something is there. A sender must put its work on the channel first and ring after, and
// the loop must take everything queued when the bell rang: then no work waits for a
// ring that already happened.
//
// The set is never polled for what is ready: the epoll fd only wakes the netpoller (an
// fd it holds becoming ready makes it readable), and the loop works out what is due
// without a system call. Every Ring counts itself before it writes the bell, and the
// loop counts what it read from it; each clock's next expiry is known from when it was
// armed and how many expiries were read, since a periodic timerfd keeps its grid. So a
// Wait reads only the fds that are due (a timerfd must be read: the kernel re-arms a
// periodic one only then), and a Wait with nothing due goes straight to the netpoller.
// An idle tick costs one read of its timerfd, where polling the set cost two more
// epoll_pwait calls. The netpoller forgets readiness it saw before a Wait began
// (syscall.RawConn.Read expects its first call to find it), which is why the counts,
// not the epoll fd's readiness, say what is due.
package loopwait

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/rawsys"
)

// Timer names one of the waiter's clocks; it is its bit in Fired.
type Timer uint8

// MaxTimers is how many clocks one waiter holds.
const MaxTimers = 8

// bellID is the doorbell's bit in Fired, above every timer's.
const bellID = 31

// Fired says what ended a Wait: which clocks expired (once or more) and whether the bell
// rang.
type Fired uint32

// Has reports whether clock t expired.
func (f Fired) Has(t Timer) bool { return f&(1<<t) != 0 }

// Rang reports whether the bell rang.
func (f Fired) Rang() bool { return f&(1<<bellID) != 0 }

// Waiter is one loop's epoll set. Ring may be called from any goroutine at any time,
// after Close too; everything else belongs to the loop's goroutine.
type Waiter struct {
	ep     *os.File // the epoll set, waited on in the netpoller
	epfd   int
	rc     syscall.RawConn
	bell   *os.File // an eventfd: Ring writes through os.File, so a Ring after Close is safe
	bellfd int
	timers []int // timerfd per Timer
	clocks [MaxTimers]clock

	rung atomic.Uint64 // Rings so far, each counted before its write
	read uint64        // the loop's: what its reads of the bell added up to

	poll  func(uintptr) bool // w.collect, bound once: no allocation per Wait
	reads [bellID + 1]uint64 // reads tried, by fd: clock ids, then the bell at bellID (tests)
	count [8]byte
	fired Fired
	err   error
}

// clock is what the loop knows of a timerfd without asking the kernel.
type clock struct {
	armedAt time.Time     // read just before it was set: the kernel's first expiry is >= armedAt+first
	first   time.Duration // the first expiry's delay
	every   time.Duration // the period; 0: once
	expired uint64        // expiries read since it was set
	due     time.Time     // the earliest its next expiry can be; zero: none can come
}

// next is the earliest the kernel can report c's next expiry: the kernel keeps a
// periodic timer on its grid (an expiry read late counts the ones it missed), and its
// grid starts no earlier than armedAt.
func (c *clock) next() time.Time {
	if c.every == 0 {
		if c.expired > 0 {
			return time.Time{}
		}
		return c.armedAt.Add(c.first)
	}
	return c.armedAt.Add(c.first + time.Duration(c.expired)*c.every)
}

// New makes a waiter with the bell and no clocks.
func New() (*Waiter, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("loopwait: epoll_create1: %w", err)
	}
	// Non-blocking, so os.NewFile puts it in the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("loopwait: epoll set: %w", err)
	}
	w := &Waiter{ep: os.NewFile(uintptr(epfd), "loopwait-epoll"), epfd: epfd}
	w.poll = w.collect
	if w.rc, err = w.ep.SyscallConn(); err != nil {
		w.ep.Close()
		return nil, fmt.Errorf("loopwait: %w", err)
	}
	// Blocking when os.NewFile sees it, so the runtime does not add the bell to its own
	// epoll (where every read of it would post a spurious EPOLLOUT wake-up); non-blocking
	// after, since the loop's raw read must never block.
	bellfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		w.ep.Close()
		return nil, fmt.Errorf("loopwait: eventfd: %w", err)
	}
	w.bell, w.bellfd = os.NewFile(uintptr(bellfd), "loopwait-bell"), bellfd
	if err := unix.SetNonblock(bellfd, true); err != nil {
		w.Close()
		return nil, fmt.Errorf("loopwait: eventfd: %w", err)
	}
	if err := w.add(bellfd, bellID); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// add puts fd in the set. Every event on it (a clock's expiry, a write of the bell) then
// wakes the set's waiter, the netpoller; the set is never itself asked what is ready.
func (w *Waiter) add(fd int, id int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: id}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("loopwait: epoll_ctl: %w", err)
	}
	return nil
}

// NewTimer adds a clock, not yet armed.
func (w *Waiter) NewTimer() (Timer, error) {
	if len(w.timers) == MaxTimers {
		return 0, fmt.Errorf("loopwait: more than %d clocks", MaxTimers)
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("loopwait: timerfd_create: %w", err)
	}
	t := Timer(len(w.timers))
	if err := w.add(fd, int32(t)); err != nil {
		unix.Close(fd)
		return 0, err
	}
	w.timers = append(w.timers, fd)
	return t, nil
}

// Every arms t to expire every d (> 0), the first time d from now.
func (w *Waiter) Every(t Timer, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("loopwait: period %v: must be positive", d)
	}
	ts := unix.NsecToTimespec(int64(d))
	return w.set(t, unix.ItimerSpec{Interval: ts, Value: ts}, d, d)
}

// After arms t to expire once, d (> 0) from now.
func (w *Waiter) After(t Timer, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("loopwait: delay %v: must be positive", d)
	}
	return w.set(t, unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}, d, 0)
}

// Stop disarms t. An expiry not yet collected is forgotten: the kernel clears a timerfd's
// count when it is set, so the next Wait cannot report t unless it is armed again and
// expires.
func (w *Waiter) Stop(t Timer) error { return w.set(t, unix.ItimerSpec{}, 0, 0) }

// Armed reads t from the kernel: whether it will expire, and its period (0: once).
func (w *Waiter) Armed(t Timer) (armed bool, every time.Duration, err error) {
	if int(t) >= len(w.timers) {
		return false, 0, fmt.Errorf("loopwait: no clock %d", t)
	}
	var cur unix.ItimerSpec
	if err := unix.TimerfdGettime(w.timers[t], &cur); err != nil {
		return false, 0, fmt.Errorf("loopwait: timerfd_gettime: %w", err)
	}
	return cur.Value.Nano() != 0, time.Duration(cur.Interval.Nano()), nil
}

// set arms t with spec (first and every as durations; first 0: disarmed).
func (w *Waiter) set(t Timer, spec unix.ItimerSpec, first, every time.Duration) error {
	if int(t) >= len(w.timers) {
		return fmt.Errorf("loopwait: no clock %d", t)
	}
	// Read before the call: the kernel counts from a moment no earlier than this one.
	c := clock{armedAt: time.Now(), first: first, every: every}
	if err := unix.TimerfdSettime(w.timers[t], 0, &spec, nil); err != nil {
		// The kernel kept the clock as it was, and so does the prediction.
		return fmt.Errorf("loopwait: timerfd_settime: %w", err)
	}
	if first != 0 {
		c.due = c.next()
	} // else disarmed: never due
	w.clocks[t] = c
	return nil
}

// Ring wakes the loop, or makes its next Wait return at once. Safe from any goroutine,
// and a no-op after Close.
func (w *Waiter) Ring() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1) // what the eventfd's counter adds
	w.rung.Add(1)                            // counted first: until read, Waits read the bell
	// The only failures: closed (the loop is gone), or EAGAIN at a counter of 2^64-2
	// (some 10^19 rings unread). Neither loses a wake-up the loop still needs.
	_, _ = w.bell.Write(one[:])
}

// Wait blocks until a clock expires or the bell rings, and says which. It fails only if
// the kernel fails a read of a clock or the bell, or the waiter was closed.
func (w *Waiter) Wait() (Fired, error) {
	w.fired, w.err = 0, nil
	if err := w.rc.Read(w.poll); err != nil {
		return 0, fmt.Errorf("loopwait: %w", err)
	}
	return w.fired, w.err
}

// collect reads what is due; false sends Wait back to the netpoller, which wakes it when
// an fd of the set becomes ready.
func (w *Waiter) collect(uintptr) bool {
	if w.rung.Load() != w.read {
		if !w.readFd(w.bellfd, bellID) {
			return true
		}
	}
	var now time.Time
	for i := range w.timers {
		c := &w.clocks[i]
		if c.due.IsZero() {
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		if !now.Before(c.due) && !w.readFd(w.timers[i], int32(i)) {
			return true
		}
	}
	return w.fired != 0 || w.err != nil
}

// readFd reads the count of fd (the bell, or clock id) and records it. EAGAIN is
// nothing yet: a clock guessed due a little early (its guess is never late), or a ring
// counted but not yet written. False: the kernel failed the read (w.err).
func (w *Waiter) readFd(fd int, id int32) bool {
	w.reads[id]++
	_, err := rawsys.Read(fd, w.count[:])
	switch {
	case err == nil:
	case errors.Is(err, unix.EAGAIN):
		return true
	default:
		w.err = fmt.Errorf("loopwait: read %d: %w", id, err)
		return false
	}
	w.fired |= 1 << id
	n := binary.NativeEndian.Uint64(w.count[:])
	if id == bellID {
		w.read += n
		return true
	}
	c := &w.clocks[id]
	c.expired += n
	c.due = c.next()
	return true
}

// Close releases the set, the clocks and the bell. The loop calls it once, after its last
// Wait.
func (w *Waiter) Close() error {
	for _, fd := range w.timers {
		unix.Close(fd)
	}
	w.timers = nil
	err := w.ep.Close()
	if w.bell != nil {
		err = errors.Join(err, w.bell.Close())
	}
	return err
}
