// Package timerfd is a periodic ticker the kernel keeps (timerfd, CLOCK_MONOTONIC), for
// oomd's owner loop.
//
// A time.Ticker lives in the Go runtime's timer heap, and the runtime's sysmon thread
// wakes for every timer that fires, besides the thread that runs it. A timerfd is a file:
// its goroutine waits in the netpoller like a socket read, the runtime knows of no timer,
// and sysmon sleeps through the ticks (it is woken by system calls, which is why the read
// is raw, internal/rawsys). On an idle oomd at 10 Hz that is the difference between
// about ten wake-ups per tick and one (docs/perf.md, "Idle cost beside earlyoom").
package timerfd

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/rawsys"
)

// Ticker delivers ticks on C like time.Ticker: one buffered tick, later ones dropped
// while it is unread (the kernel counts them; the count is not used).
type Ticker struct {
	C <-chan time.Time

	c    chan time.Time
	f    *os.File
	rc   syscall.RawConn
	done chan struct{}

	buf  [8]byte // run's: the expirations since the last read
	rerr error   // run's: the last read's error
}

// NewTicker starts a ticker with period d (> 0).
func NewTicker(d time.Duration) (*Ticker, error) {
	if d <= 0 {
		return nil, fmt.Errorf("timerfd: period %v: must be positive", d)
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: create: %w", err)
	}
	// Non-blocking, so os.NewFile puts it in the netpoller.
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	t := &Ticker{c: make(chan time.Time, 1), f: f, rc: rc, done: make(chan struct{})}
	t.C = t.c
	if err := t.Reset(d); err != nil {
		f.Close()
		return nil, err
	}
	go t.run()
	return t, nil
}

// Reset makes the period d (> 0), counted from now.
func (t *Ticker) Reset(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("timerfd: period %v: must be positive", d)
	}
	ts := unix.NsecToTimespec(int64(d))
	var serr error
	if err := t.rc.Control(func(fd uintptr) {
		serr = unix.TimerfdSettime(int(fd), 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil)
	}); err != nil {
		return fmt.Errorf("timerfd: reset: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("timerfd: reset: %w", serr)
	}
	return nil
}

// Stop ends the ticker and closes its file; no tick is sent after it returns.
func (t *Ticker) Stop() {
	t.f.Close() // the pending read returns: run ends
	<-t.done
}

func (t *Ticker) run() {
	defer close(t.done)
	read := t.readOnce // bound once: no allocation per tick
	for {
		if err := t.rc.Read(read); err != nil || t.rerr != nil {
			return // closed by Stop (nothing else fails a timerfd read)
		}
		select {
		case t.c <- time.Now():
		default:
		}
	}
}

// readOnce reads the expiration count; false (EAGAIN) waits in the netpoller.
func (t *Ticker) readOnce(fd uintptr) bool {
	_, t.rerr = rawsys.Read(int(fd), t.buf[:])
	return !errors.Is(t.rerr, unix.EAGAIN)
}
