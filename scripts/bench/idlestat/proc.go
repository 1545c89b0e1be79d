package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, which is 100 on every
// Linux architecture Go supports (sysconf(_SC_CLK_TCK) would need cgo to ask).
const userHZ = 100

// taskCounts are one thread's counters.
type taskCounts struct {
	runNs  uint64 // on-CPU time, schedstat field 1 (ns)
	slices uint64 // times scheduled in, schedstat field 3
	vol    uint64 // voluntary_ctxt_switches: the thread blocked (slept, waited)
	invol  uint64 // nonvoluntary_ctxt_switches: the thread was preempted
}

// sample is one reading of a process.
type sample struct {
	startTime uint64 // stat field 22: tells a restarted pid from the process we started with
	ticks     uint64 // utime+stime of the whole process, every thread it ever had (USER_HZ)
	rssKiB    uint64 // VmRSS
	anonKiB   uint64 // RssAnon: VmRSS less the binary's and libraries' pages and shared memory
	tasks     map[int]taskCounts
}

// readSample reads process pid under root (normally "/proc").
func readSample(root string, pid int) (sample, error) {
	dir := filepath.Join(root, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return sample{}, err
	}
	st, err := parseStat(b)
	if err != nil {
		return sample{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return sample{}, err
	}
	ps, err := parseStatus(b)
	if err != nil {
		return sample{}, fmt.Errorf("%s/status: %w", dir, err)
	}
	s := sample{startTime: st.startTime, ticks: st.utime + st.stime, rssKiB: ps.rssKiB, anonKiB: ps.anonKiB, tasks: map[int]taskCounts{}}
	ents, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return sample{}, err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		tc, err := readTask(filepath.Join(dir, "task", e.Name()))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue // the thread exited between the listing and the read
		}
		if err != nil {
			return sample{}, err
		}
		s.tasks[tid] = tc
	}
	return s, nil
}

func readTask(dir string) (taskCounts, error) {
	b, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return taskCounts{}, err
	}
	ps, err := parseStatus(b)
	if err != nil {
		return taskCounts{}, fmt.Errorf("%s/status: %w", dir, err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "schedstat"))
	if err != nil {
		return taskCounts{}, err
	}
	run, slices, err := parseSchedstat(b)
	if err != nil {
		return taskCounts{}, fmt.Errorf("%s/schedstat: %w", dir, err)
	}
	return taskCounts{runNs: run, slices: slices, vol: ps.vol, invol: ps.invol}, nil
}

type statFields struct {
	utime, stime, startTime uint64
}

// parseStat reads utime (field 14), stime (15) and starttime (22) of /proc/PID/stat. The
// command name (field 2) is in parentheses and may itself hold spaces and parentheses,
// so the fields are counted from the last ')'.
func parseStat(b []byte) (statFields, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return statFields{}, errors.New("no ')' after the command name")
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3 (state)
	const first = 3
	if len(f) < 22-first+1 {
		return statFields{}, fmt.Errorf("%d fields after the command name, want at least %d", len(f), 22-first+1)
	}
	var out statFields
	for _, x := range []struct {
		field int
		to    *uint64
	}{{14, &out.utime}, {15, &out.stime}, {22, &out.startTime}} {
		v, err := strconv.ParseUint(string(f[x.field-first]), 10, 64)
		if err != nil {
			return statFields{}, fmt.Errorf("field %d: %w", x.field, err)
		}
		*x.to = v
	}
	return out, nil
}

type statusFields struct {
	vol, invol, rssKiB, anonKiB uint64
}

// parseStatus reads voluntary_ctxt_switches, nonvoluntary_ctxt_switches (both required)
// and VmRSS and RssAnon (kB; absent in a thread's status once it is a zombie, then 0).
func parseStatus(b []byte) (statusFields, error) {
	var out statusFields
	var haveVol, haveInvol bool
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var to *uint64
		switch string(k) {
		case "voluntary_ctxt_switches":
			to, haveVol = &out.vol, true
		case "nonvoluntary_ctxt_switches":
			to, haveInvol = &out.invol, true
		case "VmRSS":
			to = &out.rssKiB
		case "RssAnon":
			to = &out.anonKiB
		default:
			continue
		}
		v = bytes.TrimSpace(v)
		v = bytes.TrimSuffix(v, []byte(" kB"))
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return statusFields{}, fmt.Errorf("%s: %w", k, err)
		}
		*to = n
	}
	if !haveVol || !haveInvol {
		return statusFields{}, errors.New("no voluntary_ctxt_switches or nonvoluntary_ctxt_switches")
	}
	return out, nil
}

// parseSchedstat reads /proc/PID/task/TID/schedstat: time on the CPU (ns), time waiting
// on a run queue (ns), and the number of times the thread was scheduled in.
func parseSchedstat(b []byte) (runNs, slices uint64, err error) {
	f := bytes.Fields(b)
	if len(f) != 3 {
		return 0, 0, fmt.Errorf("%d fields, want 3", len(f))
	}
	if runNs, err = strconv.ParseUint(string(f[0]), 10, 64); err != nil {
		return 0, 0, err
	}
	if slices, err = strconv.ParseUint(string(f[2]), 10, 64); err != nil {
		return 0, 0, err
	}
	return runNs, slices, nil
}

// delta is what one process did between two samples.
type delta struct {
	ticks          uint64 // whole process, exited threads included
	runNs          uint64 // threads alive at the end only
	slices         uint64
	vol, invol     uint64
	threads        int // at the end
	exitedThreads  int // alive at the start, gone at the end: their counts are missing
	rssKiB         uint64
	anonKiB        uint64
	restartedOrNew bool
}

// diff subtracts a from b per thread: a thread new in b counts from zero (it started in
// the window), a thread gone from b is counted in exitedThreads (its switches are lost;
// ticks are process-wide and keep them).
func diff(a, b sample) delta {
	d := delta{threads: len(b.tasks), rssKiB: b.rssKiB, anonKiB: b.anonKiB, restartedOrNew: a.startTime != b.startTime}
	if b.ticks >= a.ticks {
		d.ticks = b.ticks - a.ticks
	}
	for tid, e := range b.tasks {
		s := a.tasks[tid] // zero for a thread that started in the window
		d.runNs += sub(e.runNs, s.runNs)
		d.slices += sub(e.slices, s.slices)
		d.vol += sub(e.vol, s.vol)
		d.invol += sub(e.invol, s.invol)
	}
	for tid := range a.tasks {
		if _, ok := b.tasks[tid]; !ok {
			d.exitedThreads++
		}
	}
	return d
}

// threadRow is one thread's part of a delta.
type threadRow struct {
	tid   int
	c     taskCounts
	wchan string // where it sleeps at the end of the window (the kernel function)
}

// threads lists the threads alive at the end with what each did in the window, the
// most often woken first (ties by tid).
func threads(root string, pid int, a, b sample) []threadRow {
	var out []threadRow
	for tid, e := range b.tasks {
		s := a.tasks[tid]
		r := threadRow{tid: tid, c: taskCounts{runNs: sub(e.runNs, s.runNs), slices: sub(e.slices, s.slices),
			vol: sub(e.vol, s.vol), invol: sub(e.invol, s.invol)}}
		if w, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "task", strconv.Itoa(tid), "wchan")); err == nil {
			r.wchan = string(bytes.TrimSpace(w))
		}
		if r.wchan == "" || r.wchan == "0" {
			r.wchan = "-" // running, or the kernel hides it
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y threadRow) int {
		if x.c.vol != y.c.vol {
			return cmp.Compare(y.c.vol, x.c.vol)
		}
		return cmp.Compare(x.tid, y.tid)
	})
	return out
}

func sub(b, a uint64) uint64 {
	if b < a {
		return 0 // a tid reused by another thread; cannot happen within a process's life here
	}
	return b - a
}

// loadavg returns /proc/loadavg's first three fields.
func loadavg(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "loadavg"))
	if err != nil {
		return "?"
	}
	f := bytes.Fields(b)
	if len(f) < 3 {
		return "?"
	}
	return string(bytes.Join(f[:3], []byte(" ")))
}
