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
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/internal/ctlclient"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/lib/memstat"
)

func main() {
	var o options
	flag.StringVar(&o.socket, "socket", "", "oomd control socket")
	flag.StringVar(&o.target, "target", "hog", "subject id of the hog to kill")
	flag.StringVar(&o.critical, "critical", "", "subject id of a critical hog to prove kill denial (empty: skip)")
	flag.Uint64Var(&o.hardBytes, "hard-bytes", 8<<20, "hardBytes override set for the target and the critical hog")
	flag.Uint64Var(&o.inject, "inject", 16<<20, "bytes injected into each hog (must exceed --hard-bytes)")
	flag.BoolVar(&o.spoof, "spoof", true, "prove that a spoofed sample is rejected")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for the whole selftest")
	flag.Parse()

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
	hardBytes, inject        uint64
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

	want := []string{o.target}
	if o.critical != "" {
		want = append(want, o.critical)
	}
	if o.spoof {
		want = append(want, self)
	}
	for _, s := range want {
		if _, err := c.WaitEvent(ctx, "registration of "+s, ctlclient.IsKind(s, "subjectRegistered")); err != nil {
			return err
		}
	}
	if err := c.SetLimits(ctx, o.hardBytes, want); err != nil {
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

	if err := c.Inject(ctx, o.target, o.inject); err != nil {
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

// proveSpoofRejected publishes, on this process's own memstat connection, a sample that
// claims to be the target. oomd must reject it, attribute the attempt to us, and leave
// the target's usage alone.
func proveSpoofRejected(ctx context.Context, c *ctlclient.Client, self, target string, log *zap.Logger) error {
	pub, err := memstat.Connect(ctx, memstat.Options{Claim: target, Period: time.Millisecond}, log)
	if err != nil {
		return fmt.Errorf("spoof: connect memstat: %w", err)
	}
	defer pub.Close()
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	go pub.Run(pctx)
	pub.Set(1 << 40)
	ev, err := c.WaitEvent(ctx, "memstatRejected for "+self, ctlclient.IsKind(self, "memstatRejected"))
	if err != nil {
		return err
	}
	if ev.Reason != "claimed="+target {
		return fmt.Errorf("spoof: rejection reason %q, want %q", ev.Reason, "claimed="+target)
	}
	after, err := c.SubjectBytes(ctx, target)
	if err != nil {
		return err
	}
	if after == 1<<40 {
		return fmt.Errorf("spoof: target usage changed to the spoofed value %d", after)
	}
	return nil
}
