package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testdata/proc is a /proc with one process, 4242, of two threads (4242 and 4250), whose
// command name holds spaces and parentheses.
func TestReadSampleFromFixture(t *testing.T) {
	s, err := readSample("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	if s.ticks != 37+21 || s.startTime != 23456789 || s.rssKiB != 12688 || s.anonKiB != 4372 {
		t.Errorf("ticks %d startTime %d rss %d anon %d, want 58 23456789 12688 4372", s.ticks, s.startTime, s.rssKiB, s.anonKiB)
	}
	want := map[int]taskCounts{
		4242: {runNs: 412000000, slices: 930, vol: 900, invol: 30},
		4250: {runNs: 95000000, slices: 255, vol: 250, invol: 5},
	}
	if len(s.tasks) != len(want) {
		t.Fatalf("tasks %v, want %v", s.tasks, want)
	}
	for tid, w := range want {
		if s.tasks[tid] != w {
			t.Errorf("task %d: %+v, want %+v", tid, s.tasks[tid], w)
		}
	}
	if got := loadavg("testdata/proc"); got != "0.44 0.13 0.04" {
		t.Errorf("loadavg %q", got)
	}
	if _, err := readSample("testdata/proc", 1); err == nil {
		t.Error("a missing pid read without an error")
	}
}

func TestParseStat(t *testing.T) {
	tail := " S 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 99 0 0"
	for _, tc := range []struct {
		in      string
		want    statFields
		wantErr string
	}{
		{in: "1 (sh)" + tail, want: statFields{utime: 7, stime: 3, startTime: 99}},
		{in: "1 (a) b (c))" + tail, want: statFields{utime: 7, stime: 3, startTime: 99}},
		{in: "1 sh" + tail, wantErr: "no ')'"},
		{in: "1 (sh) S 1 1 1", wantErr: "fields after the command name"},
		{in: "1 (sh) S 1 1 1 0 -1 0 0 0 0 0 x 3 0 0 20 0 1 0 99", wantErr: "field 14"},
	} {
		got, err := parseStat([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseStatus(t *testing.T) {
	got, err := parseStatus([]byte("Name:\tx\nVmRSS:\t   2060 kB\nRssAnon:\t     488 kB\nvoluntary_ctxt_switches:\t2\nnonvoluntary_ctxt_switches:\t3\n"))
	if err != nil || got != (statusFields{vol: 2, invol: 3, rssKiB: 2060, anonKiB: 488}) {
		t.Errorf("%+v, %v", got, err)
	}
	// A zombie thread has no VmRSS: 0, not an error.
	got, err = parseStatus([]byte("voluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t0\n"))
	if err != nil || got != (statusFields{vol: 5}) {
		t.Errorf("no VmRSS: %+v, %v", got, err)
	}
	if _, err := parseStatus([]byte("VmRSS:\t1 kB\nvoluntary_ctxt_switches:\t5\n")); err == nil {
		t.Error("no nonvoluntary_ctxt_switches: no error")
	}
	if _, err := parseStatus([]byte("voluntary_ctxt_switches:\tmany\nnonvoluntary_ctxt_switches:\t0\n")); err == nil {
		t.Error("a non-number: no error")
	}
}

func TestParseSchedstat(t *testing.T) {
	run, slices, err := parseSchedstat([]byte("5681161 10890291 3\n"))
	if err != nil || run != 5681161 || slices != 3 {
		t.Errorf("%d %d %v", run, slices, err)
	}
	if _, _, err := parseSchedstat([]byte("1 2")); err == nil {
		t.Error("two fields: no error")
	}
}

func TestThreads(t *testing.T) {
	a := sample{tasks: map[int]taskCounts{4242: {vol: 10}, 4250: {vol: 1}}}
	b := sample{tasks: map[int]taskCounts{4242: {vol: 12, runNs: 5}, 4250: {vol: 9}, 4251: {vol: 2}}}
	got := threads("testdata/proc", 4242, a, b)
	want := []threadRow{
		{tid: 4250, c: taskCounts{vol: 8}, wchan: "-"},
		{tid: 4242, c: taskCounts{vol: 2, runNs: 5}, wchan: "futex_wait_queue"},
		{tid: 4251, c: taskCounts{vol: 2}, wchan: "-"}, // no such thread in the fixture
	}
	if len(got) != len(want) {
		t.Fatalf("%+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// A thread new in the window counts from zero; one gone is reported, not subtracted.
func TestDiff(t *testing.T) {
	a := sample{startTime: 9, ticks: 10, tasks: map[int]taskCounts{
		1: {runNs: 100, slices: 10, vol: 8, invol: 2},
		2: {runNs: 50, slices: 5, vol: 5}, // exits
	}}
	b := sample{startTime: 9, ticks: 13, rssKiB: 2048, tasks: map[int]taskCounts{
		1: {runNs: 160, slices: 16, vol: 13, invol: 3},
		3: {runNs: 7, slices: 2, vol: 1, invol: 1}, // new
	}}
	d := diff(a, b)
	want := delta{ticks: 3, runNs: 67, slices: 8, vol: 6, invol: 2, threads: 2, exitedThreads: 1, rssKiB: 2048}
	if d != want {
		t.Errorf("%+v, want %+v", d, want)
	}
	b.startTime = 10
	if !diff(a, b).restartedOrNew {
		t.Error("a different start time is not reported")
	}
}

// A run during which the watched log gains a matching line is reported invalid; one
// during which it does not is not.
func TestInvalidRun(t *testing.T) {
	log := filepath.Join(t.TempDir(), "base.log")
	if err := os.WriteFile(log, []byte("start\nlow memory! before the runs\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	b := bench{root: "testdata/proc", procs: []proc{{"p", 4242}}, out: &out, cmpName: -1, cmpBase: -1, threadsOf: -1,
		invalidLog: log, invalidText: "low memory!"}
	b.sleep = func(time.Duration) {} // run A: nothing happens in the window
	if _, err := b.run("A", 0); err != nil {
		t.Fatal(err)
	}
	b.sleep = func(time.Duration) { // run B: the base reaches its low-memory path
		f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("low memory! at or below SIGTERM limits\n")
		f.Close()
	}
	if _, err := b.run("B", 0); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.invalid, []string{"B"}) {
		t.Errorf("invalid runs %v, want [B]", b.invalid)
	}
	if !strings.Contains(out.String(), "**run B is INVALID**: 1 new line(s)") {
		t.Errorf("no INVALID line for run B:\n%s", out.String())
	}
}

// The report over the fixture: both tables and the ratios, with one process named twice
// (the same pid is both sides, so every ratio is 1).
func TestRunPrintsTablesAndRatios(t *testing.T) {
	var out bytes.Buffer
	b := bench{root: "testdata/proc", procs: []proc{{"oomd", 4242}, {"base", 4242}}, out: &out, cmpName: 0, cmpBase: 1,
		sumLabel: "both", sumNames: []int{0, 1}, baseHz: 10, threadsOf: 0}
	var all [][]result
	for i := range 2 {
		res, err := b.run(runLabel(i), 0)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, res)
	}
	b.summary(all)
	for _, want := range []string{
		"run A: ", "/proc/loadavg 0.44 0.13 0.04 -> 0.44 0.13 0.04",
		"| oomd | 4242 | 2 | 0.000 | 0.00 | 0.0 | 0.0 | 0.0 | 12.4 | 4.3 |",
		"| both | | 4 |",
		"summary, runs A / B",
		"| **oomd/base** | n/a (base 0) / n/a (base 0) |",
		"/ 1.00× |", // VmRSS
		"oomd's threads",
		"| 4242 | 0.000 | 0.0 | 0.0 | futex_wait_queue |",
		"| 4250 | 0.000 | 0.0 | 0.0 | - |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
