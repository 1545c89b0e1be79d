// Command tickfloor is the floor under an idle oomd's tick: a Go program that wakes every
// 100 ms and does nothing but read a cgroup counter N times, in one of the shapes oomd's
// loop had. Run beside earlyoom and measured with idlestat (docs/perf.md, "Idle cost
// beside earlyoom"), it tells what the Go runtime's wake-up costs on this machine, apart
// from oomd's own work:
//
//	ticker    a time.Ticker: the runtime's timer heap (sysmon wakes for each timer)
//	hop       a timerfd read by a goroutine of its own, handed to the loop on a channel
//	loopwait  the loop's goroutine waits on internal/loopwait itself (oomd's shape now)
//
//	tickfloor [-shape loopwait] [-reads 3] [-file /sys/fs/cgroup/memory/memory.usage_in_bytes[,...]]
//
// With several files (comma-separated) each is read -reads times a tick: three cgroups
// read once each is oomd's idle tick with three subjects.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/loopwait"
	"oomd.dev/oomd/internal/rawsys"
)

const period = 100 * time.Millisecond

func main() {
	shape := flag.String("shape", "loopwait", "ticker, hop or loopwait")
	reads := flag.Int("reads", 3, "preads of each -file per tick")
	file := flag.String("file", "/sys/fs/cgroup/memory/memory.usage_in_bytes", "kernel-generated files to read each tick, comma-separated")
	flag.Parse()
	if err := run(*shape, *reads, *file); err != nil {
		fmt.Fprintln(os.Stderr, "tickfloor:", err)
		os.Exit(1)
	}
}

func run(shape string, reads int, files string) error {
	var fds []int
	for _, name := range strings.Split(files, ",") {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	var buf [64]byte
	work := func() error {
		for _, fd := range fds {
			for range reads {
				if _, err := rawsys.Pread(fd, buf[:], 0); err != nil {
					return err
				}
			}
		}
		return nil
	}
	switch shape {
	case "ticker":
		for range time.NewTicker(period).C {
			if err := work(); err != nil {
				return err
			}
		}
	case "hop":
		tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
		if err != nil {
			return err
		}
		ts := unix.NsecToTimespec(int64(period))
		if err := unix.TimerfdSettime(tfd, 0, &unix.ItimerSpec{Interval: ts, Value: ts}, nil); err != nil {
			return err
		}
		rc, err := os.NewFile(uintptr(tfd), "timerfd").SyscallConn()
		if err != nil {
			return err
		}
		ticks := make(chan struct{}, 1)
		go func() {
			var n [8]byte
			read := func(fd uintptr) bool {
				_, err := rawsys.Read(int(fd), n[:])
				return !errors.Is(err, unix.EAGAIN)
			}
			for rc.Read(read) == nil {
				select {
				case ticks <- struct{}{}:
				default:
				}
			}
		}()
		for range ticks {
			if err := work(); err != nil {
				return err
			}
		}
	case "loopwait":
		w, err := loopwait.New()
		if err != nil {
			return err
		}
		tick, err := w.NewTimer()
		if err != nil {
			return err
		}
		if err := w.Every(tick, period); err != nil {
			return err
		}
		for {
			if _, err := w.Wait(); err != nil {
				return err
			}
			if err := work(); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown shape %q", shape)
	}
	return nil
}
