package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/oomd/policy"
)

// TestBenchLoad10Hz measures oomd's cost with N subjects each publishing at 10 Hz. It is
// a benchmark, skipped unless OOMD_BENCH_LOAD is set; it asserts nothing about time.
//
//	OOMD_BENCH_LOAD=1 go test ./services/oomd/daemon/ -run TestBenchLoad10Hz -v -count=1
//
// Each configuration (path, subjects) runs in a fresh process: this test re-executes
// the test binary once per configuration with OOMD_BENCH_PATH and OOMD_BENCH_SUBJECTS
// set, so no row carries an earlier row's heap. Set both to run one configuration in
// this process; OOMD_BENCH_CONFIGS (e.g. "page:100 rpc:1000") replaces the default list.
//
// The daemon runs in the measured process with 100 ms ticks and a fake auditor and
// terminator; every subject is registered through acceptHandoff with a SubjectHandoff
// built as execd's broker builds it. The publishers live in one load-generator child
// process (the test binary re-executed), so oomd's CPU and RSS are the measured
// process's and the publishers' are not:
//
//   - path=page: the handoff carries a memstat socket and a read-only fd of a page made
//     with page.Create (as execd does); the read-write fds go to the generator over a
//     unix socket with SCM_RIGHTS, pageFDBatch at a time, and the generator maps them
//     (page.NewWriter) and publishes on each page every 100 ms, phases spread over the
//     period. oomd reads every page on each tick.
//   - path=rpc: the handoff carries only the memstat socket (an execd with
//     --no-memstat-pages); the generator inherits the subjects' ends and sends one
//     MemstatSink stream call per 100 ms each through a 16 KiB FixedLimiter (as
//     lib/memstat), phases spread.
//   - path=bare: path=rpc's generator against do-nothing go-capnp MemstatSinks on plain
//     go-capnp connections (the idle daemon still ticks).
//
// Over OOMD_BENCH_TICKS ticks (default 50 = 5 s) after a warm-up of 10 ticks it reports
// the process's user+system CPU (getrusage), CPU per accepted sample, VmRSS (and its
// anonymous and shared parts) at the end and VmHWM. Then, except for bare, it lowers the
// first subject's hard limit just above its published value, so its next samples cross
// it, and reports the tick at which the core first showed the crossing and the tick of
// the kill decision (polled under the daemon's lock).
func TestBenchLoad10Hz(t *testing.T) {
	switch {
	case os.Getenv("OOMD_LOADGEN") != "":
		loadGenerator(t)
		return
	case os.Getenv("OOMD_PAGEGEN") != "":
		pageGenerator(t)
		return
	}
	if os.Getenv("OOMD_BENCH_LOAD") == "" {
		t.Skip("set OOMD_BENCH_LOAD=1 to run the 10 Hz load benchmark")
	}
	ticks := uint64(50)
	if v, err := strconv.Atoi(os.Getenv("OOMD_BENCH_TICKS")); err == nil && v > 0 {
		ticks = uint64(v)
	}
	if path, ns := os.Getenv("OOMD_BENCH_PATH"), os.Getenv("OOMD_BENCH_SUBJECTS"); path != "" && ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			t.Fatalf("OOMD_BENCH_SUBJECTS=%q", ns)
		}
		loadRun(t, n, ticks, path)
		return
	}
	configs := strings.Fields(os.Getenv("OOMD_BENCH_CONFIGS"))
	if len(configs) == 0 {
		// RPC stops at 1 000: 10 000 go-capnp connections at 10 Hz are more than this
		// 2-vCPU machine can serve (70 % of a core already at 1 000).
		configs = []string{"page:0", "rpc:100", "page:100", "rpc:1000", "page:1000", "page:10000"}
	}
	for _, cfg := range configs {
		path, ns, _ := strings.Cut(cfg, ":")
		t.Run(fmt.Sprintf("path=%s/subjects=%s", path, ns), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestBenchLoad10Hz$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "OOMD_BENCH_PATH="+path, "OOMD_BENCH_SUBJECTS="+ns)
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "path=") || strings.Contains(l, "crossing") {
					t.Log(strings.TrimSpace(l))
				}
			}
			if err != nil {
				t.Fatalf("%s: %v\n%s", cfg, err, out)
			}
		})
	}
}

// countingNop is the bare sink of the load benchmark: it counts and does nothing else.
type countingNop struct{ n *atomic.Uint64 }

func (c countingNop) Report(context.Context, oomdpb.MemstatSink_report) error {
	c.n.Add(1)
	return nil
}

func loadRun(t *testing.T, n int, ticks uint64, path string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := benchDaemon(t, ctx)
	var p policy.Policy
	d.withCore(func(c *policy.Core) { p = c.Policy() })
	p.SampleMs = 100
	if _, err := d.SetPolicy(p, 0); err != nil {
		t.Fatal(err)
	}
	var bareCount atomic.Uint64
	var bareConns []*rpc.Conn
	var cmd *exec.Cmd
	var watch *page.Reader // the bench's own view of the first page
	switch path {
	case "page":
		cmd, watch = startPageGenerator(t, d, n)
	case "rpc", "bare":
		cmd = startRPCGenerator(t, d, n, path == "bare", &bareCount, &bareConns)
	default:
		t.Fatalf("path %q: want page, rpc or bare", path)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		_ = d.do(func() {
			for _, s := range d.slots {
				if s.conn != nil {
					go s.conn.Close()
				}
			}
		})
		for _, c := range bareConns {
			go c.Close()
		}
	}()

	// The daemon ticks in every case (so "ticks" is the same clock); the bare sinks'
	// samples are counted by the sinks themselves.
	tickAndAccepted := func() (uint64, uint64) {
		var tk, acc uint64
		d.withCore(func(c *policy.Core) { tk, acc = c.TickCount(), c.Counters().Accepted })
		if path == "bare" {
			acc = bareCount.Load()
		}
		return tk, acc
	}
	waitTick := func(target uint64) {
		// Sleep through most of the window, then poll: the measured process should do
		// little but oomd's work meanwhile. A benchmark's wait, not synchronisation.
		if tk, _ := tickAndAccepted(); target > tk+1 {
			time.Sleep(time.Duration(target-tk-1) * 100 * time.Millisecond)
		}
		for {
			if tk, _ := tickAndAccepted(); tk >= target {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	start, _ := tickAndAccepted()
	waitTick(start + 10)
	t0, a0 := tickAndAccepted()
	cpu0, gen0, wall0 := cpuNow(), procCPU(cmd.Process.Pid), time.Now()
	waitTick(t0 + ticks)
	t1, a1 := tickAndAccepted()
	cpu, gen, wall := cpuNow()-cpu0, procCPU(cmd.Process.Pid)-gen0, time.Since(wall0)
	acc := a1 - a0
	perSample := "-"
	if acc > 0 {
		perSample = (cpu / time.Duration(acc)).String()
	}
	load, _ := os.ReadFile("/proc/loadavg")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("path=%s subjects=%d ticks=%d wall=%v accepted=%d (%.0f/s) oomd CPU %v (%.2f%% of one core) CPU/sample %s VmRSS %d KiB (anon %d, shmem %d) VmHWM %d KiB, heap in use %d KiB; load generator CPU %.1f%% of one core (loadavg %s)",
		path, n, t1-t0, wall.Round(time.Millisecond), acc, float64(acc)/wall.Seconds(), cpu.Round(time.Millisecond),
		100*cpu.Seconds()/wall.Seconds(), perSample, selfStatus(t, "VmRSS"), selfStatus(t, "RssAnon"), selfStatus(t, "RssShmem"),
		selfStatus(t, "VmHWM"), ms.HeapInuse>>10, 100*gen.Seconds()/wall.Seconds(), strings.TrimSpace(string(load)))
	if n > 0 && path != "bare" {
		crossing(t, d, subjectName(0), watch)
	}
}

// crossing lowers subject's hard limit just above its published value, so that its
// next samples cross it, and reports the tick at which the core first showed a reading
// over the limit and the tick of the kill decision, polling on the daemon's loop.
//
// With watch (the page path) it also reads the subject's page itself and reports the
// tick during which the crossing value was first on the page: the decision should come
// one tick later, at the first tick that reads it.
func crossing(t *testing.T, d *Daemon, subject string, watch *page.Reader) {
	var cur uint64
	d.withCore(func(c *policy.Core) {
		st, _ := c.Subject(subject)
		cur = st.Bytes
	})
	hard := cur + 8<<12 // the generator's values grow by 4 KiB per sample: about a second
	var p policy.Policy
	d.withCore(func(c *policy.Core) { p = c.Policy() })
	p.Overrides = append(p.Overrides, policy.SubjectLimit{Subject: subject, SoftBytes: hard - 1, HardBytes: hard})
	if _, err := d.SetPolicy(p, 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var seen, decided, onPage uint64
	var since uint64
	for (seen == 0 || decided == 0) && time.Now().Before(deadline) {
		d.withCore(func(c *policy.Core) {
			if watch != nil && onPage == 0 {
				if smp, st := watch.Read(); st == page.OK && smp.Bytes > hard {
					onPage = c.TickCount()
				}
			}
			if st, ok := c.Subject(subject); ok && seen == 0 && st.Bytes > hard {
				seen = c.TickCount()
			}
			evs, next, _ := c.Events(since, 1000)
			since = next
			for _, e := range evs {
				if e.Subject == subject && e.Kind == policy.EventKillDecided && decided == 0 {
					decided = e.Tick
				}
			}
		})
		time.Sleep(2 * time.Millisecond) // a benchmark's poll
	}
	onPageNote := ""
	if watch != nil {
		onPageNote = fmt.Sprintf("; on the page during tick %d (decision - on page = %d ticks)", onPage, int64(decided)-int64(onPage))
	}
	t.Logf("crossing subject=%s hard=%d: first shown at tick %d, killDecided at tick %d (decision - shown = %d ticks)%s",
		subject, hard, seen, decided, int64(decided)-int64(seen), onPageNote)
}

func subjectName(i int) string { return fmt.Sprintf("sub-%05d", i) }

// startRPCGenerator registers n subjects on the RPC path (or n bare sinks) and starts the
// generator with the subjects' ends of their sockets.
func startRPCGenerator(t *testing.T, d *Daemon, n int, bare bool, bareCount *atomic.Uint64, bareConns *[]*rpc.Conn) *exec.Cmd {
	files := make([]*os.File, 0, n)
	for i := range n {
		var c net.Conn
		if bare {
			srv, cli, err := rpcx.Socketpair()
			if err != nil {
				t.Fatal(err)
			}
			sc, err := rpcx.FileToConn(srv)
			if err != nil {
				t.Fatal(err)
			}
			*bareConns = append(*bareConns, rpc.NewConn(transport.NewStream(sc), &rpc.Options{
				BootstrapClient: capnp.Client(oomdpb.MemstatSink_ServerToClient(countingNop{bareCount})),
			}))
			if c, err = rpcx.FileToConn(cli); err != nil {
				t.Fatal(err)
			}
		} else {
			c = handoff(t, d, subjectName(i))
		}
		f, err := c.(*net.UnixConn).File()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		files = append(files, f)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBenchLoad10Hz$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OOMD_LOADGEN="+strconv.Itoa(n))
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	return cmd
}

// pageFDBatch is how many page fds go in one sendmsg (the kernel's SCM_MAX_FD is 253).
const pageFDBatch = 250

// startPageGenerator starts the generator, then registers n page subjects through
// acceptHandoff, passing each page's read-write fd to the generator in batches.
func startPageGenerator(t *testing.T, d *Daemon, n int) (*exec.Cmd, *page.Reader) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := fds[0], os.NewFile(uintptr(fds[1]), "pagegen")
	defer unix.Close(mine)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBenchLoad10Hz$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OOMD_PAGEGEN="+strconv.Itoa(n))
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	var watch *page.Reader
	batch := make([]*os.File, 0, pageFDBatch)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		ints := make([]int, len(batch))
		for i, f := range batch {
			ints[i] = int(f.Fd())
		}
		if err := unix.Sendmsg(mine, []byte{byte(len(batch))}, unix.UnixRights(ints...), nil, 0); err != nil {
			t.Fatalf("send page fds: %v", err)
		}
		for _, f := range batch {
			f.Close()
		}
		batch = batch[:0]
	}
	for i := range n {
		rw, err := page.Create("oomd-memstat:" + subjectName(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if watch, err = page.NewReader(rw); err != nil {
				t.Fatal(err)
			}
		}
		handoffPage(t, d, subjectName(i), rw)
		batch = append(batch, rw)
		if len(batch) == pageFDBatch {
			flush()
		}
	}
	flush()
	if err := unix.Shutdown(mine, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	return cmd, watch
}

// handoffPage hands d a page subject as execd's broker does (sendHandoff): a memstat
// socket and a read-only fd of the page, each named in the handoff's fd list.
func handoffPage(t *testing.T, d *Daemon, subject string, rw *os.File) {
	srv, cli, err := rpcx.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close() // the subject's end; oomd closes its own (a page subject reaches no RPC)
	ro, err := page.ReadOnly(rw)
	if err != nil {
		t.Fatal(err)
	}
	msg, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
	h, _ := oomdpb.NewRootSubjectHandoff(seg)
	h.SetSubject(subject)
	h.SetInstance(1)
	fl, _ := h.NewFds(2)
	fl.Set(0, oomdpb.HandoffFd_memstatSocket)
	fl.Set(1, oomdpb.HandoffFd_page)
	if err := d.acceptHandoff(msg, []*os.File{srv, ro}); err != nil {
		t.Fatal(err)
	}
}

// pageGenerator is the page path's child: fd 3 is a socket on which the pages'
// read-write fds arrive in batches until the parent shuts it down; page i is
// subjectName(i). Each page gets one publish per 100 ms, phases spread evenly: one
// ticker every millisecond publishes the pages whose slot (i mod 100) is due.
func pageGenerator(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("OOMD_PAGEGEN"))
	writers := make([]*page.Writer, 0, n)
	buf, oob := make([]byte, 16), make([]byte, unix.CmsgSpace(4*pageFDBatch))
	for len(writers) < n {
		_, oobn, _, _, err := unix.Recvmsg(3, buf, oob, 0)
		if err != nil {
			t.Fatalf("receive page fds: %v", err)
		}
		scms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(scms) == 0 {
			t.Fatalf("receive page fds: %d control messages, %v", len(scms), err)
		}
		for _, scm := range scms {
			fds, err := unix.ParseUnixRights(&scm)
			if err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				f := os.NewFile(uintptr(fd), "page")
				w, err := page.NewWriter(f)
				f.Close()
				if err != nil {
					t.Fatal(err)
				}
				writers = append(writers, w)
			}
		}
	}
	const slots = 100 // 1 ms slots in a 100 ms period
	tk := time.NewTicker(time.Millisecond)
	defer tk.Stop()
	v := make([]uint64, n)
	start, done := time.Now(), 0
	for {
		<-tk.C
		// Catch up on every slot that fell due (a ticker drops ticks when the process
		// runs late), so each page gets 10 publishes a second on average.
		for due := int(time.Since(start) / time.Millisecond); done < due; done++ {
			for i := done % slots; i < n; i += slots {
				v[i]++
				if err := writers[i].Publish(v[i] << 12); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// loadGenerator is the child: fds 3.. are the subjects' ends of their connections.
func loadGenerator(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("OOMD_LOADGEN"))
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range n {
		f := os.NewFile(uintptr(3+i), "subject")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		p := newPublisher(ctx, c, subjectName(i), true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 100 * time.Millisecond / time.Duration(n)) // spread the phases
			tk := time.NewTicker(100 * time.Millisecond)
			defer tk.Stop()
			for v := uint64(1); ; v++ {
				err := p.sink.Report(ctx, func(a oomdpb_report) error { return fill(a, v<<12, v, p.subject) })
				if err != nil {
					return
				}
				<-tk.C
			}
		}()
	}
	wg.Wait()
}

// procCPU is a process's user+system CPU time from /proc/<pid>/stat (USER_HZ = 100).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func selfStatus(t *testing.T, field string) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
