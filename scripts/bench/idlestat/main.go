// Command idlestat measures what idle processes cost, side by side, from /proc: CPU (% of
// one core), context switches per second (voluntary ones are the thread's own sleeps, so
// each is one wakeup; involuntary ones are preemptions) and VmRSS. scripts/bench/idle.sh
// (make bench-idle) runs it on the oomd stack beside earlyoom.
//
//	idlestat [-window 60s] [-runs 3] [-compare oomd/earlyoom] [-sum stack=execd+logd+oomd] name=pid...
//
// Each run reads every process, waits the window, reads again and prints a table; with
// more than one run a summary follows with the runs as A / B / C. CPU is given twice: from
// the threads' schedstat (ns) and from utime+stime in /proc/PID/stat (10 ms ticks, so
// coarse over a short window). Context switches are summed over /proc/PID/task/*; a
// thread that exits inside the window loses its counts (the table says how many did). A
// process that exits or is replaced during a run fails the run.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

type proc struct {
	name string
	pid  int
}

type result struct {
	seconds float64
	d       delta
}

func (r result) cpuPct() float64      { return float64(r.d.runNs) / 1e9 / r.seconds * 100 }
func (r result) cpuTicksPct() float64 { return float64(r.d.ticks) / userHZ / r.seconds * 100 }
func (r result) ctxPerS() float64     { return float64(r.d.vol+r.d.invol) / r.seconds }
func (r result) volPerS() float64     { return float64(r.d.vol) / r.seconds }
func (r result) involPerS() float64   { return float64(r.d.invol) / r.seconds }
func (r result) rssMiB() float64      { return float64(r.d.rssKiB) / 1024 }
func (r result) anonMiB() float64     { return float64(r.d.anonKiB) / 1024 }

func main() {
	window := flag.Duration("window", 60*time.Second, "measurement window of one run")
	runs := flag.Int("runs", 1, "runs, one after the other (A, B, C, ...)")
	compare := flag.String("compare", "", "NAME/BASE: print NAME's figures as ratios of BASE's")
	sum := flag.String("sum", "", "LABEL=NAME+NAME...: also print these processes summed")
	baseHz := flag.Float64("base-hz", 0, "with -compare: BASE is a single-threaded poller meant to wake at this rate; also print the CPU ratio with BASE's CPU scaled to it (BASE's voluntary switches/s are its polls/s)")
	perThread := flag.String("threads", "", "NAME: also print NAME's threads, one row each")
	invalidLog := flag.String("invalid-log", "", "FILE: a run during which FILE gained a line holding -invalid-text is invalid (reported; exit status 1)")
	invalidText := flag.String("invalid-text", "", "see -invalid-log")
	root := flag.String("proc", "/proc", "procfs root")
	flag.Parse()
	procs, err := parseProcs(flag.Args())
	if err == nil && *runs < 1 {
		err = fmt.Errorf("-runs %d: want at least 1", *runs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlestat:", err)
		os.Exit(2)
	}
	b := bench{root: *root, procs: procs, out: os.Stdout, baseHz: *baseHz, invalidLog: *invalidLog, invalidText: *invalidText}
	if err == nil && (*invalidLog == "") != (*invalidText == "") {
		err = fmt.Errorf("-invalid-log and -invalid-text go together")
	}
	if b.cmpName, b.cmpBase, err = parseCompare(*compare, procs); err == nil {
		b.sumLabel, b.sumNames, err = parseSum(*sum, procs)
	}
	b.threadsOf = -1
	if err == nil && *perThread != "" {
		if b.threadsOf = index(procs, *perThread); b.threadsOf < 0 {
			err = fmt.Errorf("-threads %q is not among the processes", *perThread)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlestat:", err)
		os.Exit(2)
	}
	var all [][]result
	for i := range *runs {
		res, err := b.run(runLabel(i), *window)
		if err != nil {
			fmt.Fprintln(os.Stderr, "idlestat:", err)
			os.Exit(1)
		}
		all = append(all, res)
	}
	if *runs > 1 {
		b.summary(all)
	}
	if len(b.invalid) > 0 {
		fmt.Fprintf(os.Stderr, "idlestat: run(s) %s INVALID: %q appeared in %s during them\n",
			strings.Join(b.invalid, ", "), b.invalidText, b.invalidLog)
		os.Exit(1)
	}
}

func parseProcs(args []string) ([]proc, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("no NAME=PID given")
	}
	var out []proc
	for _, a := range args {
		n, p, ok := strings.Cut(a, "=")
		pid, err := strconv.Atoi(p)
		if !ok || n == "" || err != nil || pid <= 0 {
			return nil, fmt.Errorf("%q: want NAME=PID", a)
		}
		out = append(out, proc{n, pid})
	}
	return out, nil
}

func index(procs []proc, name string) int {
	for i, p := range procs {
		if p.name == name {
			return i
		}
	}
	return -1
}

func parseCompare(s string, procs []proc) (int, int, error) {
	if s == "" {
		return -1, -1, nil
	}
	a, b, ok := strings.Cut(s, "/")
	i, j := index(procs, a), index(procs, b)
	if !ok || i < 0 || j < 0 {
		return -1, -1, fmt.Errorf("-compare %q: want NAME/BASE, both among the processes", s)
	}
	return i, j, nil
}

func parseSum(s string, procs []proc) (string, []int, error) {
	if s == "" {
		return "", nil, nil
	}
	label, names, ok := strings.Cut(s, "=")
	if !ok || label == "" {
		return "", nil, fmt.Errorf("-sum %q: want LABEL=NAME+NAME", s)
	}
	var idx []int
	for n := range strings.SplitSeq(names, "+") {
		i := index(procs, n)
		if i < 0 {
			return "", nil, fmt.Errorf("-sum: %q is not among the processes", n)
		}
		idx = append(idx, i)
	}
	return label, idx, nil
}

func runLabel(i int) string {
	if i < 26 {
		return string(rune('A' + i))
	}
	return strconv.Itoa(i + 1)
}

type bench struct {
	root             string
	procs            []proc
	out              io.Writer
	cmpName, cmpBase int
	sumLabel         string
	sumNames         []int
	baseHz           float64
	threadsOf        int // -1: none
	invalidLog       string
	invalidText      string
	invalid          []string            // labels of the invalid runs
	sleep            func(time.Duration) // the window; nil = time.Sleep (tests pass their own)
}

func (b *bench) wait(d time.Duration) {
	if b.sleep != nil {
		b.sleep(d)
		return
	}
	time.Sleep(d)
}

// countLines counts the lines of the -invalid-log file holding the -invalid-text (0 if
// none is watched or the file is missing).
func (b *bench) countLines() int {
	if b.invalidLog == "" {
		return 0
	}
	data, err := os.ReadFile(b.invalidLog)
	if err != nil {
		return 0
	}
	n := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.Contains(line, b.invalidText) {
			n++
		}
	}
	return n
}

func (b *bench) snap() ([]sample, time.Time, error) {
	var out []sample
	for _, p := range b.procs {
		s, err := readSample(b.root, p.pid)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("%s (pid %d): %w", p.name, p.pid, err)
		}
		out = append(out, s)
	}
	return out, time.Now(), nil
}

func (b *bench) run(label string, window time.Duration) ([]result, error) {
	la0 := loadavg(b.root)
	bad0 := b.countLines()
	s0, t0, err := b.snap()
	if err != nil {
		return nil, err
	}
	b.wait(window) // the measurement window itself, not a wait for anything
	s1, t1, err := b.snap()
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", label, err)
	}
	la1 := loadavg(b.root)
	bad := b.countLines() - bad0
	secs := t1.Sub(t0).Seconds()
	res := make([]result, len(b.procs))
	for i, p := range b.procs {
		res[i] = result{seconds: secs, d: diff(s0[i], s1[i])}
		if res[i].d.restartedOrNew {
			return nil, fmt.Errorf("run %s: %s (pid %d) was replaced during the window", label, p.name, p.pid)
		}
	}
	fmt.Fprintf(b.out, "\nrun %s: %.1f s, /proc/loadavg %s -> %s\n\n", label, secs, la0, la1)
	if bad > 0 {
		b.invalid = append(b.invalid, label)
		fmt.Fprintf(b.out, "**run %s is INVALID**: %d new line(s) holding %q in %s\n\n", label, bad, b.invalidText, b.invalidLog)
	}
	fmt.Fprintln(b.out, "| process | pid | threads | CPU % of one core | CPU % (stat ticks) | ctx switches/s | voluntary/s | involuntary/s | VmRSS MiB | RssAnon MiB |")
	fmt.Fprintln(b.out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for i, p := range b.procs {
		r := res[i]
		th := strconv.Itoa(r.d.threads)
		if r.d.exitedThreads > 0 {
			th += fmt.Sprintf(" (%d exited)", r.d.exitedThreads)
		}
		fmt.Fprintf(b.out, "| %s | %d | %s | %.3f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
			p.name, p.pid, th, r.cpuPct(), r.cpuTicksPct(), r.ctxPerS(), r.volPerS(), r.involPerS(), r.rssMiB(), r.anonMiB())
	}
	if b.sumLabel != "" {
		s := b.summed(res)
		fmt.Fprintf(b.out, "| %s | | %d | %.3f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
			b.sumLabel, s.d.threads, s.cpuPct(), s.cpuTicksPct(), s.ctxPerS(), s.volPerS(), s.involPerS(), s.rssMiB(), s.anonMiB())
	}
	if b.threadsOf >= 0 {
		p := b.procs[b.threadsOf]
		fmt.Fprintf(b.out, "\n%s's threads (woken = voluntary switches: each is one sleep ended)\n\n", p.name)
		fmt.Fprintln(b.out, "| tid | CPU % of one core | woken/s | involuntary/s | sleeps in (wchan, at the end) |")
		fmt.Fprintln(b.out, "|---:|---:|---:|---:|---|")
		for _, t := range threads(b.root, p.pid, s0[b.threadsOf], s1[b.threadsOf]) {
			fmt.Fprintf(b.out, "| %d | %.3f | %.1f | %.1f | %s |\n", t.tid, float64(t.c.runNs)/1e9/secs*100,
				float64(t.c.vol)/secs, float64(t.c.invol)/secs, t.wchan)
		}
	}
	if b.cmpName >= 0 {
		n, base := res[b.cmpName], res[b.cmpBase]
		fmt.Fprintf(b.out, "\n%s/%s: CPU %s (stat ticks %s), ctx switches/s %s, VmRSS %s, RssAnon %s\n",
			b.procs[b.cmpName].name, b.procs[b.cmpBase].name,
			ratio(n.cpuPct(), base.cpuPct()), ratio(n.cpuTicksPct(), base.cpuTicksPct()),
			ratio(n.ctxPerS(), base.ctxPerS()), ratio(n.rssMiB(), base.rssMiB()), ratio(n.anonMiB(), base.anonMiB()))
		if b.baseHz > 0 {
			hz := base.volPerS()
			fmt.Fprintf(b.out, "%s woke %.2f times/s; with its CPU scaled to %g Hz, %s/%s CPU %s\n",
				b.procs[b.cmpBase].name, hz, b.baseHz, b.procs[b.cmpName].name, b.procs[b.cmpBase].name,
				scaledRatio(n, base, b.baseHz))
		}
		if b.sumLabel != "" {
			s := b.summed(res)
			fmt.Fprintf(b.out, "%s/%s: CPU %s, ctx switches/s %s, VmRSS %s\n", b.sumLabel, b.procs[b.cmpBase].name,
				ratio(s.cpuPct(), base.cpuPct()), ratio(s.ctxPerS(), base.ctxPerS()), ratio(s.rssMiB(), base.rssMiB()))
		}
	}
	return res, nil
}

// summed adds the -sum processes' deltas (RSS too: it double-counts shared pages, as VmRSS
// does per process).
func (b *bench) summed(res []result) result {
	var s result
	for _, i := range b.sumNames {
		r := res[i]
		s.seconds = r.seconds
		s.d.ticks += r.d.ticks
		s.d.runNs += r.d.runNs
		s.d.slices += r.d.slices
		s.d.vol += r.d.vol
		s.d.invol += r.d.invol
		s.d.threads += r.d.threads
		s.d.rssKiB += r.d.rssKiB
		s.d.anonKiB += r.d.anonKiB
	}
	return s
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a (base 0)"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// scaledRatio is n's CPU over base's scaled from the rate base woke at (its voluntary
// switches/s) to hz.
func scaledRatio(n, base result, hz float64) string {
	if base.volPerS() == 0 {
		return "n/a (base never woke)"
	}
	return ratio(n.cpuPct(), base.cpuPct()*hz/base.volPerS())
}

// summary prints every run side by side: one cell holds A / B / C.
func (b *bench) summary(all [][]result) {
	labels := make([]string, len(all))
	for i := range all {
		labels[i] = runLabel(i)
		if slices.Contains(b.invalid, labels[i]) {
			labels[i] += " (INVALID)"
		}
	}
	runs := strings.Join(labels, " / ")
	cell := func(f func(r result) float64, format string, rows func(run []result) result) string {
		parts := make([]string, len(all))
		for i, run := range all {
			parts[i] = fmt.Sprintf(format, f(rows(run)))
		}
		return strings.Join(parts, " / ")
	}
	fmt.Fprintf(b.out, "\nsummary, runs %s\n\n", runs)
	fmt.Fprintf(b.out, "| process | CPU %% of one core (%s) | CPU %% stat ticks | ctx switches/s | voluntary/s | VmRSS MiB | RssAnon MiB |\n", runs)
	fmt.Fprintln(b.out, "|---|---:|---:|---:|---:|---:|---:|")
	row := func(name string, rows func(run []result) result) {
		fmt.Fprintf(b.out, "| %s | %s | %s | %s | %s | %s | %s |\n", name,
			cell(result.cpuPct, "%.3f", rows), cell(result.cpuTicksPct, "%.2f", rows),
			cell(result.ctxPerS, "%.1f", rows), cell(result.volPerS, "%.1f", rows), cell(result.rssMiB, "%.1f", rows),
			cell(result.anonMiB, "%.1f", rows))
	}
	for i, p := range b.procs {
		row(p.name, func(run []result) result { return run[i] })
	}
	if b.sumLabel != "" {
		row(b.sumLabel, b.summed)
	}
	if b.cmpName < 0 {
		return
	}
	rc := func(f func(r result) float64) string {
		parts := make([]string, len(all))
		for i, run := range all {
			parts[i] = ratio(f(run[b.cmpName]), f(run[b.cmpBase]))
		}
		return strings.Join(parts, " / ")
	}
	fmt.Fprintf(b.out, "| **%s/%s** | %s | %s | %s | %s | %s | %s |\n", b.procs[b.cmpName].name, b.procs[b.cmpBase].name,
		rc(result.cpuPct), rc(result.cpuTicksPct), rc(result.ctxPerS), rc(result.volPerS), rc(result.rssMiB), rc(result.anonMiB))
	if b.baseHz > 0 {
		parts := make([]string, len(all))
		hz := make([]string, len(all))
		for i, run := range all {
			base := run[b.cmpBase]
			parts[i] = scaledRatio(run[b.cmpName], base, b.baseHz)
			hz[i] = fmt.Sprintf("%.2f", base.volPerS())
		}
		fmt.Fprintf(b.out, "\n%s woke %s times/s; CPU %s/%s with %s's CPU scaled to %g Hz: %s\n",
			b.procs[b.cmpBase].name, strings.Join(hz, " / "), b.procs[b.cmpName].name, b.procs[b.cmpBase].name,
			b.procs[b.cmpBase].name, b.baseHz, strings.Join(parts, " / "))
	}
}
