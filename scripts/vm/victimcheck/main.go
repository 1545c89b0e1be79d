// Command victimcheck drives the VM's pressure-victim test (scripts/qemu-test.sh,
// VM_TEST=victim). execd starts it after svc-a and svc-b, and starts the leaker only
// once it called ready, so the levels are in force before the leak begins:
//
//  1. wait until oomd holds svc-a's and svc-b's arenas, then read MemAvailable (A0)
//     and set pressure levels relative to it (warning 75 %, imminentOom 60 %, oom 15 %
//     of A0; a 512 MiB guest has no fixed numbers that fit every kernel build), with
//     victims at imminentOom;
//  2. call ready: execd starts the leaker (it publishes nothing; oomd sees its cgroup);
//  3. wait for the level to reach imminentOom, the victim decision (it must be the
//     leaker), its killed event, and the level back to normal;
//  4. check that svc-a and svc-b are still registered and were never picked, that the
//     halt token was never claimed, and that /proc/vmstat's oom_kill is 0; print
//     "SELFTEST: victim ok subject=leaker survivors=2 vmstat oom_kill=0 ..." and exit 0
//     (exitWith: the VM powers off).
//
// Any failure prints "SELFTEST: FAILED: <why>" and exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/session"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

func main() {
	socket := flag.String("socket", "", "oomd control socket")
	leaker := flag.String("leaker", "leaker", "the subject that must be the victim")
	others := flag.String("survivors", "svc-a,svc-b", "comma-separated subjects that must survive")
	timeout := flag.Duration("timeout", 120*time.Second, "deadline for the whole check")
	flag.Parse()

	log := logx.New("victimcheck")
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, *socket, *leaker, strings.Split(*others, ","), log); err != nil {
		fmt.Printf("SELFTEST: FAILED: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, socket, leaker string, survivors []string, log *zap.Logger) error {
	sess, err := session.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("open execd session: %w", err)
	}
	defer sess.Close()
	c, err := ctlclient.Dial(ctx, socket, log)
	if err != nil {
		return err
	}
	defer c.Close()

	for _, id := range survivors {
		if _, err := c.WaitEvent(ctx, id+" registered", ctlclient.IsKind(id, "subjectRegistered")); err != nil {
			return err
		}
		// Their arenas are allocated at start; wait until oomd's reading holds them.
		for {
			n, err := c.SubjectBytes(ctx, id)
			if err != nil {
				return err
			}
			if n >= 8<<20 {
				break
			}
			if err := c.WaitTicks(ctx, 1); err != nil {
				return err
			}
		}
	}
	a0, err := meminfo("MemAvailable")
	if err != nil {
		return err
	}
	levels := policy.LevelThresholds{WarningBytes: a0 * 75 / 100, ImminentOOMBytes: a0 * 60 / 100, OOMBytes: a0 * 15 / 100,
		HysteresisBytes: 16 << 20, IntervalMs: 50}
	if err := c.UpdatePolicy(ctx, func(p *policy.Policy) {
		p.Levels = levels
		p.Victims.Level = policy.VictimLevelImminent
	}); err != nil {
		return fmt.Errorf("set levels: %w", err)
	}
	fmt.Fprintf(os.Stderr, "victimcheck: MemAvailable %d; levels warning=%d imminentOom=%d oom=%d\n",
		a0, levels.WarningBytes, levels.ImminentOOMBytes, levels.OOMBytes)
	if err := sess.Ready(ctx); err != nil { // execd now starts the leaker
		return err
	}

	crossed, err := c.WaitEvent(ctx, "level imminentOom", func(e policy.Event) bool {
		return e.Kind == policy.EventLevelChanged && strings.HasSuffix(e.Reason, "->imminentOom")
	})
	if err != nil {
		return err
	}
	atCrossing, _ := c.SubjectBytes(ctx, leaker) // a moment after the crossing: a lower bound of the growth past it
	decided, err := c.WaitEvent(ctx, "a victim decision", func(e policy.Event) bool { return e.Kind == policy.EventKillDecided })
	if err != nil {
		return err
	}
	if decided.Subject != leaker {
		return fmt.Errorf("the victim was %s (%s), want %s", decided.Subject, decided.Reason, leaker)
	}
	if !strings.HasPrefix(decided.Reason, policy.ReasonVictim+": ") {
		return fmt.Errorf("%s was killed for %q, not as a pressure victim", leaker, decided.Reason)
	}
	killed, err := c.WaitEvent(ctx, leaker+" killed", ctlclient.IsKind(leaker, "killed"))
	if err != nil {
		return err
	}
	back, err := c.WaitEvent(ctx, "level back to normal", func(e policy.Event) bool {
		return e.Kind == policy.EventLevelChanged && e.Seq > crossed.Seq && strings.HasSuffix(e.Reason, "->normal")
	})
	if err != nil {
		return err
	}

	for _, e := range c.Events() {
		switch {
		case e.Kind == policy.EventHaltClaimed:
			return fmt.Errorf("the halt token was claimed (%s)", e.Reason)
		case e.Kind == policy.EventKillDecided && e.Subject != leaker:
			return fmt.Errorf("%s was picked too (%s)", e.Subject, e.Reason)
		}
	}
	for _, id := range survivors {
		if _, err := c.SubjectBytes(ctx, id); err != nil {
			return fmt.Errorf("survivor %s: %w", id, err)
		}
	}
	kills, err := vmstat("oom_kill")
	if err != nil {
		return err
	}
	if kills != 0 {
		return fmt.Errorf("the kernel's OOM killer acted %d times", kills)
	}
	fmt.Printf("SELFTEST: victim ok subject=%s survivors=%d vmstat oom_kill=%d decidedBytes=%d bytesAtCrossing=%d"+
		" crossingTick=%d killedTick=%d normalTick=%d memAvailable0=%d imminentOom=%d\n",
		leaker, len(survivors), kills, decided.Bytes, atCrossing, crossed.Tick, killed.Tick, back.Tick, a0, levels.ImminentOOMBytes)
	return nil
}

// meminfo reads one /proc/meminfo field, in bytes.
func meminfo(field string) (uint64, error) {
	v, err := procField("/proc/meminfo", field+":")
	return v << 10, err
}

func vmstat(field string) (uint64, error) { return procField("/proc/vmstat", field) }

func procField(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == key {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, errors.New(path + ": no " + key)
}
