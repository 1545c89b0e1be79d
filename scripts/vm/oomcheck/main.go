// Command oomcheck drives the VM's two-boot system-OOM test (scripts/qemu-test.sh,
// VM_TEST=oom). The kernel command line says which boot it is (oomtest=boot1|boot2):
//
//	boot1: grow the injectable hog in steps, each followed by two oomd ticks, until
//	       oomd's level reaches oom and the halt token is claimed; then report the
//	       kernel's OOM kills (/proc/vmstat oom_kill, must be 0) and wait to be stopped
//	       by the teardown. Prints "SELFTEST: oom level reached ...".
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
	"syscall"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/ctlclient"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/session"
)

func main() {
	socket := flag.String("socket", "", "oomd control socket")
	target := flag.String("target", "hog", "injectable hog to grow")
	step := flag.Uint64("step", 8<<20, "bytes injected per step")
	timeout := flag.Duration("timeout", 120*time.Second, "deadline for this boot's check")
	flag.Parse()

	log := logx.New("oomcheck")
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, *socket, *target, *step, log); err != nil {
		fmt.Printf("SELFTEST: FAILED: %v\n", err)
		os.Exit(1)
	}
}

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

	f, rel := c.Ctl.LastReboot(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return fmt.Errorf("lastReboot: %w", err)
	}
	rec, err := res.Record()
	if err != nil {
		return fmt.Errorf("lastReboot: %w", err)
	}
	switch boot {
	case "boot1":
		if rec.Valid() {
			return fmt.Errorf("boot 1 found a last reboot record (reason %s): the disk was not fresh", rec.Reason())
		}
		return growToOOM(ctx, c, target, step)
	case "boot2":
		if !rec.Valid() || rec.Reason() != oomdpb.RebootReason_oom {
			return fmt.Errorf("boot 2: lastReboot valid=%t reason=%s, want a valid oom record", rec.Valid(), rec.Reason())
		}
		names, _ := rec.NotStopped()
		var ns []string
		for i := range names.Len() {
			n, _ := names.At(i)
			ns = append(ns, n)
		}
		fmt.Printf("SELFTEST: last reboot oom ok graceful=%t teardownMs=%d notStopped=%s bootCount=%d\n",
			rec.Graceful(), rec.TeardownMs(), strings.Join(ns, ","), rec.BootCount())
		return nil
	}
	return fmt.Errorf("no oomtest=boot1|boot2 on the kernel command line (%q)", strings.TrimSpace(string(cmdline)))
}

// growToOOM injects step bytes at a time, letting oomd take two ticks of samples after
// each, until the halt token is claimed.
func growToOOM(ctx context.Context, c *ctlclient.Client, target string, step uint64) error {
	if _, err := c.WaitEvent(ctx, "registration of "+target, ctlclient.IsKind(target, "subjectRegistered")); err != nil {
		return err
	}
	before, err := oomKills()
	if err != nil {
		return err
	}
	var total uint64
	for {
		st, err := status(ctx, c)
		if err != nil {
			return err
		}
		if st.haltClaimed {
			after, err := oomKills()
			if err != nil {
				return err
			}
			fmt.Printf("SELFTEST: oom level reached level=%s memAvailable=%d injected=%d vmstat oom_kill=%d\n",
				st.level, st.memAvailable, total, after-before)
			if after != before {
				return fmt.Errorf("the kernel's OOM killer acted %d times before oomd's OOM", after-before)
			}
			<-ctx.Done() // the teardown stops us (SIGTERM); the VM then reboots
			return nil
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
