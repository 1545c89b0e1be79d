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
package loopwait

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
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

	poll   func(uintptr) bool // w.collect, bound once: no allocation per Wait
	events [MaxTimers + 1]unix.EpollEvent
	count  [8]byte
	fired  Fired
	err    error
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
	bellfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		w.ep.Close()
		return nil, fmt.Errorf("loopwait: eventfd: %w", err)
	}
	w.bell, w.bellfd = os.NewFile(uintptr(bellfd), "loopwait-bell"), bellfd
	if err := w.add(bellfd, bellID); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// add puts fd in the set, edge-triggered: an fd is reported once per event, not again on
// every poll while it stays readable. (Level-triggered, each poll that reported an fd
// would queue it again and wake the netpoller's epoll for nothing.) Whatever is
// reported is drained (collect), so no count is left behind an edge.
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
	return w.set(t, unix.ItimerSpec{Interval: ts, Value: ts})
}

// After arms t to expire once, d (> 0) from now.
func (w *Waiter) After(t Timer, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("loopwait: delay %v: must be positive", d)
	}
	return w.set(t, unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))})
}

// Stop disarms t. An expiry not yet collected is forgotten: the kernel clears a timerfd's
// count when it is set, so the next Wait cannot report t unless it is armed again and
// expires.
func (w *Waiter) Stop(t Timer) error { return w.set(t, unix.ItimerSpec{}) }

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

func (w *Waiter) set(t Timer, spec unix.ItimerSpec) error {
	if int(t) >= len(w.timers) {
		return fmt.Errorf("loopwait: no clock %d", t)
	}
	if err := unix.TimerfdSettime(w.timers[t], 0, &spec, nil); err != nil {
		return fmt.Errorf("loopwait: timerfd_settime: %w", err)
	}
	return nil
}

// Ring wakes the loop, or makes its next Wait return at once. Safe from any goroutine,
// and a no-op after Close.
func (w *Waiter) Ring() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1) // what the eventfd's counter adds
	// The only failures: closed (the loop is gone), or EAGAIN at a counter of 2^64-2,
	// which os.File waits out. Neither loses a wake-up the loop still needs.
	_, _ = w.bell.Write(one[:])
}

// Wait blocks until a clock expires or the bell rings, and says which. It fails only if
// the kernel fails a read of the set, a clock or the bell, or the waiter was closed.
func (w *Waiter) Wait() (Fired, error) {
	w.fired, w.err = 0, nil
	if err := w.rc.Read(w.poll); err != nil {
		return 0, fmt.Errorf("loopwait: %w", err)
	}
	return w.fired, w.err
}

// collect takes what is ready without waiting; false sends Wait back to the netpoller.
func (w *Waiter) collect(uintptr) bool {
	n, err := rawsys.EpollPoll(w.epfd, w.events[:])
	if err != nil {
		w.err = fmt.Errorf("loopwait: epoll_pwait: %w", err)
		return true
	}
	for _, ev := range w.events[:n] {
		fd := w.bellfd
		if ev.Fd != bellID {
			fd = w.timers[ev.Fd]
		}
		// Reading resets the count (timerfd) or the counter (eventfd). EAGAIN: nothing
		// left, as when a clock was set again after it expired, or two rings were
		// reported by one edge and taken by the read before.
		switch _, err := rawsys.Read(fd, w.count[:]); {
		case err == nil:
			w.fired |= 1 << ev.Fd
		case !errors.Is(err, unix.EAGAIN):
			w.err = fmt.Errorf("loopwait: read %d: %w", ev.Fd, err)
			return true
		}
	}
	return w.fired != 0
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
