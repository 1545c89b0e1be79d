package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
)

// teardownResult is a SystemControl.teardown answer.
type teardownResult struct {
	Graceful         bool
	TeardownMs       uint32
	NotStopped       []string
	WatchersTimedOut []string
}

// startTeardown sends SystemControl.teardown through the watchdog's grants and returns a
// function that waits for the answer.
func (h *harness) startTeardown(reason oomdpb.RebootReason) func() (teardownResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	f, rel := h.system.Teardown(ctx, func(p oomdpb.SystemControl_teardown_Params) error {
		p.SetReason(reason)
		return nil
	})
	return func() (teardownResult, error) {
		defer cancel()
		defer rel()
		res, err := f.Struct()
		if err != nil {
			return teardownResult{}, err
		}
		r, err := res.Report()
		if err != nil {
			return teardownResult{}, err
		}
		return teardownResult{
			Graceful:         r.Graceful(),
			TeardownMs:       r.TeardownMs(),
			NotStopped:       textList(h.t, r.NotStopped),
			WatchersTimedOut: textList(h.t, r.WatchersTimedOut),
		}, nil
	}
}

func (h *harness) teardown(reason oomdpb.RebootReason) teardownResult {
	h.t.Helper()
	r, err := h.startTeardown(reason)()
	require.NoError(h.t, err)
	return r
}

func textList(t testing.TB, get func() (capnp.TextList, error)) []string {
	l, err := get()
	require.NoError(t, err)
	var out []string
	for i := range l.Len() {
		s, err := l.At(i)
		require.NoError(t, err)
		out = append(out, s)
	}
	return out
}

// sigterms returns the subjects in the order their SIGTERM lines appear in events.
func sigterms(events []string) []string {
	var ids []string
	for _, l := range events {
		if id, ok := strings.CutPrefix(l, "sigterm "); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// testRebootWatcher is the test's own RebootWatcher, registered as the watchdog's through
// SystemControl.watchReboot.
type testRebootWatcher struct{ got chan oomdpb.RebootReason }

func (w testRebootWatcher) Rebooting(_ context.Context, call oomdpb.RebootWatcher_rebooting) error {
	w.got <- call.Args().Reason()
	return nil
}

// watchRebootAsWatchdog registers a test watcher through the watchdog's SystemControl.
func (h *harness) watchRebootAsWatchdog() chan oomdpb.RebootReason {
	h.t.Helper()
	w := testRebootWatcher{got: make(chan oomdpb.RebootReason, 4)}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	f, rel := h.system.WatchReboot(ctx, func(p oomdpb.SystemControl_watchReboot_Params) error {
		return p.SetWatcher(oomdpb.RebootWatcher_ServerToClient(w))
	})
	defer rel()
	_, err := f.Struct()
	require.NoError(h.t, err)
	return w.got
}

func TestTeardownStopsInReverseDependencyOrderAndTheWatchdogsDependenciesLast(t *testing.T) {
	wd := withDeps(watchdog(), "logd")
	indep := child("indep")
	indep.Restart = "always" // no restart during a teardown
	services := []svc{
		child("logd", "--ready"),
		wd,
		child("base", "--ready"),
		withDeps(child("mid", "--ready"), "base"),
		withDeps(child("top", "--reboot-watcher", "answer"), "mid"),
		withDeps(child("leaf"), "wd"),
		indep,
	}
	h := start(t, services)
	for _, id := range []string{"logd", "base", "mid", "top", "leaf", "indep"} {
		h.waitEvent("start " + id)
	}
	h.waitEvent("watching top")
	wdReboot := h.watchRebootAsWatchdog()
	wdPid := h.pidOf("wd")

	r := h.teardown(oomdpb.RebootReason_oom)
	assert.Equal(t, teardownResult{Graceful: true, TeardownMs: r.TeardownMs}, r)
	select {
	case reason := <-wdReboot:
		assert.Equal(t, oomdpb.RebootReason_oom, reason, "the watchdog's own watcher (SystemControl.watchReboot)")
	default:
		t.Error("the watcher registered through SystemControl was not told before the acknowledgement")
	}

	ev := h.events()
	stops := sigterms(ev)
	assert.ElementsMatch(t, []string{"logd", "base", "mid", "top", "leaf", "indep"}, stops,
		"every service but the watchdog got SIGTERM, once: %v", ev)
	for _, id := range stops {
		assert.Less(t, index(ev, "rebooting:oom top"), index(ev, "sigterm "+id), "watchers are told before any stop: %v", ev)
	}
	for _, edge := range [][2]string{{"top", "mid"}, {"mid", "base"}} {
		assert.Less(t, index(ev, "sigterm "+edge[0]), index(ev, "sigterm "+edge[1]),
			"%s depends on %s, so it stops first: %v", edge[0], edge[1], ev)
	}
	assert.Equal(t, "logd", stops[len(stops)-1], "what the watchdog depends on stops after all the others: %v", ev)
	assert.Equal(t, 1, strings.Count(strings.Join(ev, "\n"), "start indep"), "nothing restarts during a teardown")

	_, err := os.Stat(fmt.Sprintf("/proc/%d", wdPid))
	assert.NoError(t, err, "the watchdog is not stopped: it ends the system itself")
	res := h.terminate("leaf", 1)
	assert.Equal(t, oomdpb.Refusal_shuttingDown, res.refusal, res.detail)

	assert.Equal(t, 0, h.stop(), "SIGTERM still stops execd after a teardown")
	assert.Equal(t, "wd", sigterms(h.events())[len(stops)], "and stops the watchdog")
}

func TestTeardownKillsAServiceThatIgnoresSIGTERM(t *testing.T) {
	stubborn := withDeps(child("stubborn", "--ignore-term"), "wd")
	stubborn.StopTimeoutMs = 100
	h := start(t, []svc{watchdog(), stubborn, withDeps(child("calm"), "wd")})
	exits := h.watchExits()
	h.waitEvent("start stubborn")
	h.waitEvent("start calm")

	r := h.teardown(oomdpb.RebootReason_userRequest)
	assert.False(t, r.Graceful)
	assert.Equal(t, []string{"stubborn"}, r.NotStopped)
	assert.Empty(t, r.WatchersTimedOut)
	assert.True(t, nextExit(t, exits, "stubborn").Killed, "SIGKILL after its stop timeout")
	assert.False(t, nextExit(t, exits, "calm").Killed)
	assert.Equal(t, 0, h.stop())
}

func TestTeardownCutsOffAWatcherThatNeverAnswers(t *testing.T) {
	h := startWithArgs(t, []svc{
		watchdog(),
		withDeps(child("mute", "--reboot-watcher", "hang"), "wd"),
		withDeps(child("polite", "--reboot-watcher", "answer"), "wd"),
	}, []string{"--reboot-watcher-timeout", "200ms"})
	h.waitEvent("watching mute")
	h.waitEvent("watching polite")

	r := h.teardown(oomdpb.RebootReason_oom)
	assert.False(t, r.Graceful, "a watcher timed out")
	assert.Equal(t, []string{"mute"}, r.WatchersTimedOut)
	assert.Empty(t, r.NotStopped)
	ev := h.events()
	assert.GreaterOrEqual(t, index(ev, "rebooting:oom mute"), 0, "the mute watcher was told: %v", ev)
	assert.GreaterOrEqual(t, index(ev, "rebooting-answered polite"), 0, ev)
	assert.ElementsMatch(t, []string{"mute", "polite"}, sigterms(ev), "the teardown went on and stopped both")
	assert.Equal(t, 0, h.stop())
}

func TestTeardownRunsOnceAndRefusesTerminate(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	require.NoError(t, unix.Mkfifo(gate, 0o600))
	h := start(t, []svc{
		watchdog(),
		withDeps(child("gated", "--reboot-watcher", "answer", "--reboot-gate", gate), "wd"),
		withDeps(child("victim"), "wd"),
	})
	h.waitEvent("watching gated")
	h.waitEvent("start victim")

	first := h.startTeardown(oomdpb.RebootReason_oom)
	// The gated watcher holds the teardown in its notification step until we open the gate.
	h.waitEvent("rebooting:oom gated")

	res := h.terminate("victim", 1)
	assert.Equal(t, oomdpb.Refusal_shuttingDown, res.refusal, res.detail)
	assert.Contains(t, res.detail, "teardown")
	_, err := h.startTeardown(oomdpb.RebootReason_oom)()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "teardown already in progress")
	assert.Empty(t, sigterms(h.events()), "no service is stopped before the watchers answered")

	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = g.Write([]byte{1})
	require.NoError(t, err)
	g.Close()
	r, err := first()
	require.NoError(t, err)
	assert.True(t, r.Graceful)
	assert.ElementsMatch(t, []string{"gated", "victim"}, sigterms(h.events()))

	_, err = h.startTeardown(oomdpb.RebootReason_userRequest)()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "teardown already done")
	assert.Equal(t, 1, strings.Count(h.out.String(), "teardown: started"), "one shutdown, never a second")
	assert.Equal(t, 0, h.stop())
}

func TestSIGTERMDuringTeardownLetsItFinishThenStopsTheWatchdog(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	require.NoError(t, unix.Mkfifo(gate, 0o600))
	h := start(t, []svc{
		child("logd", "--ready"),
		withDeps(watchdog(), "logd"),
		withDeps(child("gated", "--reboot-watcher", "answer", "--reboot-gate", gate), "wd"),
	})
	h.waitEvent("watching gated")
	first := h.startTeardown(oomdpb.RebootReason_oom)
	h.waitEvent("rebooting:oom gated")

	require.NoError(t, h.cmd.Process.Signal(syscall.SIGTERM))
	h.waitFor("execd to begin its own stop", func() bool { return strings.Contains(h.out.String(), "stopping all services") })
	assert.Empty(t, sigterms(h.events()), "the stop waits for the teardown, which waits for the watcher")

	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = g.Write([]byte{1})
	require.NoError(t, err)
	g.Close()
	assert.Equal(t, 0, h.exitCode())
	assert.Equal(t, []string{"gated", "logd", "wd"}, sigterms(h.events()),
		"the teardown's order, then the watchdog, once each")
	_, _ = first() // the watchdog may be gone before it passed the answer on
}

func TestExecdExitsWithTheWatchdogsStatusAfterTeardown(t *testing.T) {
	h := start(t, []svc{
		child("logd", "--ready"),
		withDeps(watchdog("--term-exit", "42"), "logd"),
		withDeps(child("app"), "wd"),
	})
	h.waitEvent("start app")
	r := h.teardown(oomdpb.RebootReason_oom)
	assert.True(t, r.Graceful)
	assert.Equal(t, []string{"app", "logd"}, sigterms(h.events()))

	// The watchdog ends the system: here it exits (on the host oomd exits with its
	// configured code; in the VM it reboots), and execd passes its status on.
	require.NoError(t, syscall.Kill(h.pidOf("wd"), syscall.SIGTERM))
	assert.Equal(t, 42, h.exitCode())
	assert.Contains(t, h.out.String(), "wd exited (exit=42) after the system teardown")
}

func TestTeardownDuringStartup(t *testing.T) {
	h := start(t, []svc{
		watchdog(),
		withDeps(child("never-ready"), "wd"),
		withDeps(child("waiting"), "never-ready"),
	})
	h.waitEvent("start never-ready")
	r := h.teardown(oomdpb.RebootReason_oom)
	assert.True(t, r.Graceful)
	assert.Equal(t, []string{"never-ready"}, sigterms(h.events()))
	assert.Equal(t, 0, h.stop(), "a teardown is not a start-up failure: execd waits for the watchdog")
	assert.NotContains(t, h.out.String(), "start-up failed")
	assert.Equal(t, -1, index(h.events(), "start waiting"), "nothing starts after a teardown")
}

// BenchmarkTeardown20Services measures SystemControl.teardown (round trip through the
// watchdog, as oomd calls it) of 20 services that stop promptly: logd (which the
// watchdog depends on) and 19 apps that depend on the watchdog, each a real process.
// Only the teardown call is timed; every iteration starts a fresh execd with its 21
// children, so run it with a fixed count (see docs/perf.md):
//
//	go test -run '^$' -bench Teardown -benchtime 20x ./services/execd-stub/
func BenchmarkTeardown20Services(b *testing.B) {
	services := []svc{child("logd", "--ready"), withDeps(watchdog(), "logd")}
	for i := range 19 {
		services = append(services, withDeps(child(fmt.Sprintf("app%02d", i)), "wd"))
	}
	var worst time.Duration
	var execdMs []float64
	b.StopTimer()
	for range b.N {
		h := start(b, services)
		for i := range 19 {
			h.waitEvent(fmt.Sprintf("start app%02d", i))
		}
		h.waitEvent("start logd")

		begin := time.Now()
		b.StartTimer()
		r := h.teardown(oomdpb.RebootReason_oom)
		b.StopTimer()
		worst = max(worst, time.Since(begin))

		require.True(b, r.Graceful)
		require.Len(b, sigterms(h.events()), 20)
		execdMs = append(execdMs, float64(r.TeardownMs))
		require.Equal(b, 0, h.stop())
	}
	slices.Sort(execdMs)
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
	b.ReportMetric(execdMs[len(execdMs)/2], "execd-p50-ms")
	b.ReportMetric(execdMs[len(execdMs)-1], "execd-max-ms")
}
