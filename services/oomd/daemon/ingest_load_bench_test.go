package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
)

// TestBenchLoad10Hz measures oomd's cost with N subjects each reporting at 10 Hz. It is
// a benchmark, skipped unless OOMD_BENCH_LOAD is set; it asserts nothing about time.
//
//	OOMD_BENCH_LOAD=1 go test ./services/oomd/daemon/ -run TestBenchLoad10Hz -v -count=1
//
// The daemon runs in this test process with its real sink path (acceptHandoff, one
// socketpair per subject, PublisherLimits), 100 ms ticks and a fake auditor and
// terminator (no sample crosses a limit). execd brokers one connection per child, so
// 1 000 subjects would need 1 000 processes; instead the publishers live in one
// load-generator child process (this test binary re-executed) that inherits the
// subjects' ends of the socketpairs: oomd's CPU and RSS are this process's, the
// publishers' are not. Each publisher sends one stream call every 100 ms through a
// 16 KiB FixedLimiter (as lib/memstat does), phases spread evenly over the period.
// Over OOMD_BENCH_TICKS ticks (default 100 = 10 s) after a warm-up of 20 ticks it
// reports this process's user+system CPU (getrusage), CPU per accepted sample, VmRSS
// at the end and VmHWM. sink=bare is the same with do-nothing go-capnp MemstatSinks on
// plain go-capnp connections in place of oomd's sink path (the idle daemon still ticks).
func TestBenchLoad10Hz(t *testing.T) {
	if os.Getenv("OOMD_LOADGEN") != "" {
		loadGenerator(t)
		return
	}
	if os.Getenv("OOMD_BENCH_LOAD") == "" {
		t.Skip("set OOMD_BENCH_LOAD=1 to run the 10 Hz load benchmark")
	}
	ticks := uint64(100)
	if v, err := strconv.Atoi(os.Getenv("OOMD_BENCH_TICKS")); err == nil && v > 0 {
		ticks = uint64(v)
	}
	for _, n := range []int{0, 100, 1000} {
		for _, sink := range []string{"oomd", "bare"} {
			if n == 0 && sink == "bare" {
				continue
			}
			t.Run(fmt.Sprintf("subjects=%d/sink=%s", n, sink), func(t *testing.T) { loadRun(t, n, ticks, sink == "bare") })
		}
	}
}

// countingNop is the bare sink of the load benchmark: it counts and does nothing else.
type countingNop struct{ n *atomic.Uint64 }

func (c countingNop) Report(context.Context, oomdpb.MemstatSink_report) error {
	c.n.Add(1)
	return nil
}

func loadRun(t *testing.T, n int, ticks uint64, bare bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := benchDaemon(t, ctx)
	p := d.core.Policy()
	p.SampleMs = 100
	if _, err := d.SetPolicy(p, 0); err != nil {
		t.Fatal(err)
	}
	var bareCount atomic.Uint64
	var bareConns []*rpc.Conn
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
			bareConns = append(bareConns, rpc.NewConn(transport.NewStream(sc), &rpc.Options{
				BootstrapClient: capnp.Client(oomdpb.MemstatSink_ServerToClient(countingNop{&bareCount})),
			}))
			if c, err = rpcx.FileToConn(cli); err != nil {
				t.Fatal(err)
			}
		} else {
			c = handoff(t, d, fmt.Sprintf("sub-%04d", i))
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
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		d.mu.Lock()
		for _, s := range d.slots {
			go s.conn.Close()
		}
		d.mu.Unlock()
		for _, c := range bareConns {
			go c.Close()
		}
	}()

	// The daemon ticks in both cases (so "ticks" is the same clock); the bare sinks'
	// samples are counted by the sinks themselves.
	tickAndAccepted := func() (uint64, uint64) {
		var tk, acc uint64
		d.withCore(func(c *policy.Core) { tk, acc = c.TickCount(), c.Counters().Accepted })
		if bare {
			acc = bareCount.Load()
		}
		return tk, acc
	}
	waitTick := func(target uint64) {
		for {
			if tk, _ := tickAndAccepted(); tk >= target {
				return
			}
			time.Sleep(20 * time.Millisecond) // a benchmark's poll, not synchronisation
		}
	}
	start, _ := tickAndAccepted()
	waitTick(start + 20)
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
	sink := "oomd"
	if bare {
		sink = "bare"
	}
	t.Logf("sink=%s subjects=%d ticks=%d wall=%v accepted=%d (%.0f/s) oomd CPU %v (%.2f%% of one core) CPU/sample %s VmRSS %d KiB VmHWM %d KiB; load generator CPU %.1f%% of one core (loadavg %s)",
		sink, n, t1-t0, wall.Round(time.Millisecond), acc, float64(acc)/wall.Seconds(), cpu.Round(time.Millisecond),
		100*cpu.Seconds()/wall.Seconds(), perSample, selfStatus(t, "VmRSS"), selfStatus(t, "VmHWM"),
		100*gen.Seconds()/wall.Seconds(), strings.TrimSpace(string(load)))
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
		p := newPublisher(ctx, c, fmt.Sprintf("sub-%04d", i), true)
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
