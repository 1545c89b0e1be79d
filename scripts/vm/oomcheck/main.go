// Command oomcheck drives the VM's two-boot system-OOM test (scripts/qemu-test.sh,
// VM_TEST=oom). The kernel command line says which boot it is (oomtest=boot1|boot2):
//
//	boot1: register as a reboot watcher with execd, then grow the injectable hog in
//	       steps, each followed by two oomd ticks, until oomd claims the halt token.
//	       execd tells reboot watchers before it stops anything, so the report comes
//	       from rebooting(): oomd's level and MemAvailable, and the kernel's OOM kills
//	       (/proc/vmstat oom_kill, must be 0). Prints "SELFTEST: oom level reached ...",
//	       then the teardown stops this process (SIGTERM), which is the expected end.
//	boot2: read lastReboot over RPC; it must be valid with reason oom. Prints
//	       "SELFTEST: last reboot oom ok ..." and exits 0 (exitWith: the VM powers off).
//
// Any failure prints "SELFTEST: FAILED: <why>" and exits 1.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/services/oomd/ctlclient"
)

func main() {
	socket := flag.String("socket", "", "oomd control socket")
	target := flag.String("target", "hog", "injectable hog to grow")
	step := flag.Uint64("step", 8<<20, "bytes injected per step")
	timeout := flag.Duration("timeout", 120*time.Second, "deadline for this boot's check")
	flag.Parse()

	log := logx.New("oomcheck")
	defer log.Sync()
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, *timeout)
	defer cancel()
	err := run(ctx, *socket, *target, *step, log)
	switch {
	case err != nil && sigCtx.Err() != nil && reported.Load():
		log.Info("stopped by the teardown after the report")
	case err != nil:
		fmt.Printf("SELFTEST: FAILED: %v\n", err)
		os.Exit(1)
	}
}

// reported is set once boot 1's report was printed: being stopped after that is the
// expected end, not a failure.
var reported atomic.Bool

func run(ctx context.Context, socket, target string, step uint64, log *zap.Logger) error {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	var boot string
	for _, w := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(w, "oomtest="); ok {
			boot = v
		}
	}
	sess, err := session.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("open execd session: %w", err)
	}
	defer sess.Close()
	if err := sess.Ready(ctx); err != nil {
		return err
	}
	c, err := ctlclient.Dial(ctx, socket, log)
	if err != nil {
		return err
	}
	defer c.Close()

	rec, err := c.LastReboot(ctx)
	if err != nil {
		return err
	}
	switch boot {
	case "boot1":
		if rec.Valid {
			return fmt.Errorf("boot 1 found a last reboot record (reason %s): the disk was not fresh", rec.Reason)
		}
		w := oomdpb.RebootWatcher_ServerToClient(&watcher{c: c})
		wf, wrel := sess.Client.WatchReboot(ctx, func(p oomdpb.Session_watchReboot_Params) error { return p.SetWatcher(w) })
		defer wrel()
		if _, err := wf.Struct(); err != nil {
			return fmt.Errorf("watchReboot: %w", err)
		}
		return growToOOM(ctx, c, target, step)
	case "boot2":
		if !rec.Valid || rec.Reason != oomdpb.RebootReason_oom {
			return fmt.Errorf("boot 2: lastReboot valid=%t reason=%s, want a valid oom record", rec.Valid, rec.Reason)
		}
		fmt.Printf("SELFTEST: last reboot oom ok graceful=%t teardownMs=%d notStopped=%s bootCount=%d\n",
			rec.Graceful, rec.TeardownMs, strings.Join(rec.NotStopped, ","), rec.BootCount)
		return nil
	}
	return fmt.Errorf("no oomtest=boot1|boot2 on the kernel command line (%q)", strings.TrimSpace(string(cmdline)))
}

// growToOOM injects step bytes at a time, letting oomd take two ticks of samples after
// each, until the halt token is claimed; then it waits for the teardown to stop it.
func growToOOM(ctx context.Context, c *ctlclient.Client, target string, step uint64) error {
	if _, err := c.WaitEvent(ctx, "registration of "+target, ctlclient.IsKind(target, "subjectRegistered")); err != nil {
		return err
	}
	var total uint64
	for {
		st, err := status(ctx, c)
		if err != nil {
			return err
		}
		if st.haltClaimed {
			fmt.Fprintf(os.Stderr, "oomcheck: halt claimed after %d bytes injected\n", total)
			<-ctx.Done() // the teardown stops us (SIGTERM); the VM then reboots
			return ctx.Err()
		}
		if err := c.Inject(ctx, target, step); err != nil {
			return fmt.Errorf("after %d bytes: %w", total, err)
		}
		total += step
		for t0 := st.tick; ; {
			s2, err := status(ctx, c)
			if err != nil {
				return err
			}
			if s2.tick >= t0+2 || s2.haltClaimed {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond): // polling oomd's tick counter
			}
		}
	}
}

// watcher is this process's reboot watcher: execd calls rebooting() before it stops
// any service, so this is where boot 1 reports.
type watcher struct{ c *ctlclient.Client }

func (w *watcher) Rebooting(ctx context.Context, call oomdpb.RebootWatcher_rebooting) error {
	reason := call.Args().Reason()
	st, err := status(ctx, w.c)
	if err != nil {
		fmt.Printf("SELFTEST: FAILED: rebooting(%s): %v\n", reason, err)
		return nil
	}
	kills, err := oomKills() // since boot: this is a fresh VM
	if err != nil {
		fmt.Printf("SELFTEST: FAILED: rebooting(%s): %v\n", reason, err)
		return nil
	}
	if reason != oomdpb.RebootReason_oom || !st.haltClaimed {
		fmt.Printf("SELFTEST: FAILED: told rebooting(%s) with haltClaimed=%t, want oom\n", reason, st.haltClaimed)
		return nil
	}
	fmt.Printf("SELFTEST: oom level reached level=%s memAvailable=%d vmstat oom_kill=%d\n", st.level, st.memAvailable, kills)
	if kills != 0 {
		fmt.Printf("SELFTEST: FAILED: the kernel's OOM killer acted %d times before oomd's OOM\n", kills)
		return nil
	}
	reported.Store(true)
	return nil
}

type snapshot struct {
	tick, memAvailable uint64
	level              oomdpb.PressureLevel
	haltClaimed        bool
}

func status(ctx context.Context, c *ctlclient.Client) (snapshot, error) {
	f, rel := c.Ctl.Status(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return snapshot{}, fmt.Errorf("status: %w", err)
	}
	st, err := res.Status()
	if err != nil {
		return snapshot{}, fmt.Errorf("status: %w", err)
	}
	return snapshot{tick: st.Tick(), memAvailable: st.MemAvailableBytes(), level: st.Level(), haltClaimed: st.HaltClaimed()}, nil
}

func oomKills() (uint64, error) {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, nil
}
