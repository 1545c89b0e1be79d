// Command selftest-client proves oomd's kill path end to end against the real stack and
// prints one marker per proof:
//
//	SELFTEST: spoof rejected ok   a sample claiming another subject was rejected
//	SELFTEST: kill denied ok      a critical subject over its limit was denied, not killed
//	SELFTEST: oom kill ok         a hog over its limit was audited, terminated and exited
//
// It exits non-zero naming the failed step on any failure or timeout. It waits on events
// pushed by oomd, each with a deadline; it never sleeps to synchronise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/procstat"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/internal/version"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

func main() {
	var o options
	flag.StringVar(&o.socket, "socket", "", "oomd control socket")
	flag.StringVar(&o.target, "target", "hog", "subject id of the hog to kill")
	flag.StringVar(&o.critical, "critical", "", "subject id of a critical hog to prove kill denial (empty: skip)")
	flag.Uint64Var(&o.hardBytes, "hard-bytes", 8<<20, "hardBytes override set for the target and the critical hog")
	flag.Uint64Var(&o.inject, "inject", 16<<20, "bytes injected into each hog (must exceed --hard-bytes)")
	flag.BoolVar(&o.spoof, "spoof", true, "prove that a subject cannot publish for another subject")
	flag.StringVar(&o.silent, "silent", "", "subject id of a hog that publishes nothing: prove it is killed on the kernel's count (empty: skip)")
	flag.StringVar(&o.family, "family", "", "subject id of a hog that forks members: prove the kill takes every process (empty: skip)")
	flag.StringVar(&o.liar, "liar", "", "subject id of a hog that under-reports: prove memstatUnderReported (empty: skip)")
	flag.Uint64Var(&o.kernelHard, "kernel-hard-bytes", 96<<20, "hardBytes on the kernel's count for --silent and --family")
	flag.StringVar(&o.overshoot, "overshoot", "", "comma-separated subject ids of runaway hogs (--steps-after-inject) to start one at a time and report how far past --kernel-hard-bytes the kernel's peak got before the kill (cgroup v2 memory.peak)")
	flag.Uint64Var(&o.kernelInject, "kernel-inject", 128<<20, "bytes injected into --silent, --family and --liar (they must be injectable)")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for the whole selftest")
	showVersion := version.Flag()
	flag.Parse()
	version.Exit(showVersion, os.Stdout)

	log := logx.New("selftest")
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o, log); err != nil {
		fmt.Printf("SELFTEST: FAILED: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	socket, target, critical string
	silent, family, liar     string
	overshoot                string
	hardBytes, inject        uint64
	kernelHard, kernelInject uint64
	spoof                    bool
	timeout                  time.Duration
}

func run(ctx context.Context, o options, log *zap.Logger) error {
	if o.socket == "" {
		return fmt.Errorf("--socket is required")
	}
	if o.inject <= o.hardBytes {
		return fmt.Errorf("--inject (%d) must exceed --hard-bytes (%d)", o.inject, o.hardBytes)
	}
	oomBefore, err := kernelOOMKills()
	if err != nil {
		return err
	}
	sess, err := session.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("open execd session: %w", err)
	}
	defer sess.Close()
	self, _, _, err := sess.Whoami(ctx)
	if err != nil {
		return err
	}
	if err := sess.Ready(ctx); err != nil {
		return err
	}

	c, err := ctlclient.Dial(ctx, o.socket, log)
	if err != nil {
		return err
	}
	defer c.Close()

	// The inject proofs run on the cooperative signal (what the hog publishes), the
	// kernel proofs on the kernel's count.
	cooperative := []string{o.target, self}
	if o.critical != "" {
		cooperative = append(cooperative, o.critical)
	}
	var kernel []string
	for _, id := range []string{o.silent, o.family} {
		if id != "" {
			kernel = append(kernel, id)
		}
	}
	var runaways []string
	if o.overshoot != "" {
		runaways = strings.Split(o.overshoot, ",")
		kernel = append(kernel, runaways...)
	}
	all := append(slices.Clone(cooperative), kernel...)
	if o.liar != "" {
		all = append(all, o.liar)
	}
	for _, s := range all {
		if _, err := c.WaitEvent(ctx, "registration of "+s, ctlclient.IsKind(s, "subjectRegistered")); err != nil {
			return err
		}
	}
	coop, kern := policy.SignalCooperative, policy.SignalKernel
	if err := c.UpdatePolicy(ctx, func(p *policy.Policy) {
		for _, id := range cooperative {
			p.Overrides = append(p.Overrides, policy.SubjectLimit{Subject: id, SoftBytes: o.hardBytes / 2, HardBytes: o.hardBytes, Signal: &coop})
		}
		for _, id := range kernel {
			p.Overrides = append(p.Overrides, policy.SubjectLimit{Subject: id, SoftBytes: o.kernelHard / 2, HardBytes: o.kernelHard, Signal: &kern})
		}
		p.UnderReport = policy.UnderReport{MarginBytes: 16 << 20, Ticks: 3}
	}); err != nil {
		return err
	}

	if o.spoof {
		if err := proveSpoofRejected(ctx, c, self, o.target, log); err != nil {
			return err
		}
		fmt.Println("SELFTEST: spoof rejected ok")
	}
	if o.critical != "" {
		if err := c.Inject(ctx, o.critical, o.inject); err != nil {
			return err
		}
		if _, err := c.WaitEvent(ctx, "killDenied for "+o.critical, ctlclient.IsKind(o.critical, "killDenied")); err != nil {
			return err
		}
		fmt.Println("SELFTEST: kill denied ok")
	}

	if err := proveKernelTruth(ctx, c, o); err != nil {
		return err
	}
	for _, id := range runaways {
		if err := measureOvershoot(ctx, c, id, o.kernelHard); err != nil {
			return err
		}
	}

	if err := c.Inject(ctx, o.target, o.inject); err != nil && !errors.Is(err, ctlclient.ErrSubjectGone) {
		return err
	}
	decided, err := c.WaitEvent(ctx, "killDecided for "+o.target, ctlclient.IsKind(o.target, "killDecided"))
	if err != nil {
		return err
	}
	exited, err := c.WaitEvent(ctx, "subjectExited for "+o.target, ctlclient.IsKind(o.target, "subjectExited"))
	if err != nil {
		return err
	}
	killed, err := c.WaitEvent(ctx, "killed for "+o.target, ctlclient.IsKind(o.target, "killed"))
	if err != nil {
		return err
	}
	// killed requires the observed exit, so it can only follow it.
	if !(decided.Seq < exited.Seq && exited.Seq < killed.Seq && decided.Decision == killed.Decision) {
		return fmt.Errorf("kill events out of order: decided seq %d, exited seq %d, killed seq %d", decided.Seq, exited.Seq, killed.Seq)
	}
	if killed.Bytes <= o.hardBytes {
		return fmt.Errorf("killed at %d bytes, not above hardBytes %d", killed.Bytes, o.hardBytes)
	}
	if n, err := c.CountKind(ctx, o.target, "killDecided"); err != nil || n != 1 {
		return fmt.Errorf("want exactly one kill decision for %s, got %d (%v)", o.target, n, err)
	}
	if err := c.AuditHas(ctx, o.target, decided.Decision); err != nil {
		return err
	}
	// The kill must have been ours: the kernel's own OOM killer must not have acted.
	oomAfter, err := kernelOOMKills()
	if err != nil {
		return err
	}
	n := oomAfter - oomBefore
	fmt.Printf("SELFTEST: vmstat oom_kill=%d\n", n)
	if n != 0 {
		return fmt.Errorf("the kernel's OOM killer acted %d times during the selftest", n)
	}
	fmt.Println("SELFTEST: oom kill ok")
	return nil
}

// kernelOOMKills reads oom_kill from /proc/vmstat: the kernel's OOM kills since boot.
// The selftest compares it before and after, so earlier kills on a host do not count.
func kernelOOMKills() (uint64, error) {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/vmstat: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, nil // kernels without the counter have no OOM kills to report
}

// proveSpoofRejected tries what a v1 subject could do: call MemstatSink.report on its own
// brokered connection with a sample that claims to be the target. A subject that has a
// memstat page reaches no RPC endpoint of oomd at all (security invariant 8): the call
// must fail, nothing may reach oomd's core (no sample accepted or rejected), and the
// target's reading must not change.
func proveSpoofRejected(ctx context.Context, c *ctlclient.Client, self, target string, log *zap.Logger) error {
	rejBefore, _, _, err := c.Counters(ctx)
	if err != nil {
		return err
	}
	d, err := rpcx.InheritedUnixConn(rpcx.EnvMemstatFD)
	if err != nil {
		return fmt.Errorf("spoof: %w", err)
	}
	defer d.Close()
	d.SetReadDeadline(time.Now().Add(10 * time.Second))
	conn, err := rpcx.ReceiveConn(d)
	if err != nil {
		return fmt.Errorf("spoof: receive the brokered connection: %w", err)
	}
	rc := rpcx.NewConn(conn, capnp.Client{}, log.Named("spoof"))
	defer rc.Close()
	sink := oomdpb.MemstatSink(rc.Bootstrap(ctx))
	defer sink.Release()
	callErr := sink.Report(ctx, func(p oomdpb.MemstatSink_report_Params) error {
		m, err := p.NewSample()
		if err != nil {
			return err
		}
		m.SetBytes(1 << 40)
		return m.SetClaimedSubject(target)
	})
	if callErr == nil {
		callErr = sink.WaitStreaming()
	}
	if callErr == nil {
		return errors.New("spoof: oomd accepted a MemstatSink.report from a subject")
	}
	log.Info("spoof refused: oomd serves subjects no RPC endpoint", zap.Error(callErr))
	if err := c.WaitTicks(ctx, 3); err != nil {
		return err
	}
	rejAfter, _, _, err := c.Counters(ctx)
	if err != nil {
		return err
	}
	if rejAfter != rejBefore {
		return fmt.Errorf("spoof: oomd saw %d spoofed samples: the RPC path is still reachable", rejAfter-rejBefore)
	}
	if b, err := c.SubjectBytes(ctx, target); err != nil || b == 1<<40 {
		return fmt.Errorf("spoof: target usage is %d (%v)", b, err)
	}
	return nil
}

// proveKernelTruth: a hog that publishes nothing is killed on the kernel's count; a hog
// that forks members is killed whole (no process of it outlives its killed event); a
// hog that publishes a tenth of what it holds is reported as under-reporting.
func proveKernelTruth(ctx context.Context, c *ctlclient.Client, o options) error {
	// Each is triggered by an inject (the hog allocates and, being what it is, publishes
	// nothing or a tenth), so the markers come in a fixed order.
	for _, id := range []string{o.silent, o.family} {
		if id == "" {
			continue
		}
		if err := c.Inject(ctx, id, o.kernelInject); err != nil && !errors.Is(err, ctlclient.ErrSubjectGone) {
			return err
		}
		killed, err := c.WaitEvent(ctx, "killed for "+id, ctlclient.IsKind(id, "killed"))
		if err != nil {
			return err
		}
		if killed.Bytes <= o.kernelHard {
			return fmt.Errorf("%s killed at %d bytes, not above its hardBytes %d", id, killed.Bytes, o.kernelHard)
		}
		if left := survivors(id); len(left) > 0 {
			return fmt.Errorf("%s: processes %v outlived the killed event", id, left)
		}
		if id == o.silent {
			fmt.Printf("SELFTEST: kernel kill ok (subject=%s)\n", id)
		} else {
			fmt.Printf("SELFTEST: family kill ok (subject=%s)\n", id)
		}
	}
	if o.liar != "" {
		if err := c.Inject(ctx, o.liar, o.kernelInject/2); err != nil {
			return err
		}
		ev, err := c.WaitEvent(ctx, "memstatUnderReported for "+o.liar, ctlclient.IsKind(o.liar, "memstatUnderReported"))
		if err != nil {
			return err
		}
		if ev.Bytes <= ev.Limit+16<<20 {
			return fmt.Errorf("under-report event with kernel %d and published %d: not a gap above the margin", ev.Bytes, ev.Limit)
		}
		fmt.Printf("SELFTEST: under-report detected ok (subject=%s)\n", o.liar)
	}
	return nil
}

// survivors lists live processes of subject id that were execd's (our parent's):
// re-parented members of a killed subject would be there. A subject's processes carry
// OOMD_SUBJECT=<id> in their environment.
func survivors(id string) []int {
	want := "OOMD_SUBJECT=" + id
	ppid := strconv.Itoa(os.Getppid())
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procstat.Read(pid)
		if err != nil || st.Gone() || string(st.Field(procstat.FieldPPID)) != ppid {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(string(env), "\x00"), want) {
			out = append(out, pid)
		}
	}
	return out
}

// measureOvershoot starts a runaway hog (one inject starts its steps) and polls its
// cgroup's memory.peak (cgroup v2) until oomd's killed event: how far the kernel's count
// got past hardBytes while oomd read, audited and asked execd to terminate. A
// measurement, printed for docs/perf.md; it asserts only that the kill happened.
func measureOvershoot(ctx context.Context, c *ctlclient.Client, id string, hard uint64) error {
	peakPath := fmt.Sprintf("/sys/fs/cgroup/oomd-execd.%d/%s.1/memory.peak", os.Getppid(), id)
	high := "max"
	if b, err := os.ReadFile(strings.TrimSuffix(peakPath, "peak") + "high"); err == nil {
		high = strings.TrimSpace(string(b))
	}
	if err := c.Inject(ctx, id, 1); err != nil {
		return err
	}
	killedC := make(chan policy.Event, 1)
	errC := make(chan error, 1)
	go func() {
		ev, err := c.WaitEvent(ctx, "killed for "+id, ctlclient.IsKind(id, "killed"))
		if err != nil {
			errC <- err
			return
		}
		killedC <- ev
	}()
	var peak uint64
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		if b, err := os.ReadFile(peakPath); err == nil {
			if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				peak = max(peak, v)
			}
		}
		select {
		case err := <-errC:
			return err
		case ev := <-killedC:
			over := int64(peak) - int64(hard)
			fmt.Printf("SELFTEST: overshoot subject=%s memoryHigh=%s hard=%d decided=%d peak=%d over=%d\n", id, high, hard, ev.Bytes, peak, over)
			return nil
		case <-t.C:
		}
	}
}
