package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/sysoom"
)

// System OOM end to end: MemAvailable comes from a meminfo file the test writes, the
// record store is a file that outlives the stack (the "disk"), and the reboot action is
// exit:0, so execd ends with oomd and a second stack on the same store is the next boot.

// sysManifest: logd, oomd reading the test's meminfo and persisting to record, and the
// extra services. Levels: warning 300 MiB, imminentOom 200 MiB, oom 100 MiB, hysteresis
// 16 MiB; 10 ms ticks.
func sysManifest(record, extra string) string {
	return `{"services": [
  {"id": "logd", "argv": ["${BIN}/logd-stub", "--socket", "${RUNTIME_DIR}/logd.sock", "--dir", "${RUNTIME_DIR}/journal"],
   "critical": true, "stopTimeoutMs": 2000},
  {"id": "oomd", "argv": ["${BIN}/oomd", "--socket", "${RUNTIME_DIR}/oomd.sock", "--logd", "${RUNTIME_DIR}/logd.sock",
                          "--policy", "${RUNTIME_DIR}/policy.json", "--meminfo", "${RUNTIME_DIR}/meminfo",
                          "--reboot-record", "` + record + `", "--reboot-action", "exit:0"],
   "role": "watchdog", "critical": true, "dependsOn": ["logd"], "stopTimeoutMs": 2000}` + extra + `
]}`
}

func sysPolicy(oomTimeoutMs int) string {
	return fmt.Sprintf(`{"softBytes": 4194304, "hardBytes": 1073741824, "sampleMs": 10, "killBudget": 4, "killWindowTicks": 100,
  "levels": {"warningBytes": 314572800, "imminentOomBytes": 209715200, "oomBytes": 104857600, "hysteresisBytes": 16777216},
  "oomTimeoutMs": %d}`, oomTimeoutMs)
}

// sysHog is a hog that only grows on inject, with its own SIGTERM behaviour and stop
// timeout.
func sysHog(id, flags string, stopMs int) string {
	return fmt.Sprintf(`,
  {"id": %q, "argv": ["${BIN}/hog", "--step-every", "0", "--max-bytes", "1048576"%s],
   "dependsOn": ["oomd"], "stopTimeoutMs": %d}`, id, flags, stopMs)
}

// setMemAvailable rewrites the meminfo file oomd reads (atomically: a rename, so oomd
// never reads half a file).
func setMemAvailable(t *testing.T, s *stack, bytes uint64) {
	t.Helper()
	tmp := s.path("meminfo.tmp")
	body := fmt.Sprintf("MemTotal:       16777216 kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n", bytes>>10, bytes>>10)
	require.NoError(t, os.WriteFile(tmp, []byte(body), 0o600))
	require.NoError(t, os.Rename(tmp, s.path("meminfo")))
}

func startSysStack(t *testing.T, record, extra string, oomTimeoutMs int, memAvailable uint64) *stack {
	t.Helper()
	body := fmt.Sprintf("MemAvailable:   %d kB\n", memAvailable>>10)
	return startStack(t, sysManifest(record, extra), map[string]string{"policy.json": sysPolicy(oomTimeoutMs), "meminfo": body})
}

// waitReady waits until oomd has each service registered and execd logged it ready (a
// hog is ready once its signal handling is set up).
func waitReady(t *testing.T, ctx context.Context, s *stack, c *ctlclient.Client, ids ...string) {
	t.Helper()
	for _, id := range ids {
		_, err := c.WaitEvent(ctx, id+" registered", ctlclient.IsKind(id, "subjectRegistered"))
		require.NoError(t, err)
		s.waitLine("\tready\t{\"subject\": \""+id+"\"", 20*time.Second)
	}
}

func lastReboot(t *testing.T, ctx context.Context, c *ctlclient.Client) oomdpb.RebootRecord {
	t.Helper()
	f, rel := c.Ctl.LastReboot(ctx, nil)
	t.Cleanup(rel)
	res, err := f.Struct()
	require.NoError(t, err)
	rec, err := res.Record()
	require.NoError(t, err)
	return rec
}

func readRecord(t *testing.T, path string) sysoom.Record {
	t.Helper()
	st, err := sysoom.OpenStore(path)
	require.NoError(t, err)
	defer st.Close()
	rec, err := st.Read()
	require.NoError(t, err)
	return rec
}

// levelRecorder is a LevelWatcher that answers at once and keeps what it was told.
type levelRecorder struct{ got chan oomdpb.PressureLevel }

func (r levelRecorder) Changed(_ context.Context, call oomdpb.LevelWatcher_changed) error {
	r.got <- call.Args().Level()
	return nil
}

// TestLevelsFromMeminfo: MemAvailable read from the file moves the level through
// warning and imminentOom and back with hysteresis; a watcher is told each change, and
// each change is an event and an audit record in logd.
func TestLevelsFromMeminfo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	record := filepath.Join(t.TempDir(), "reboot.rec")
	s := startSysStack(t, record, "", 30000, 1<<30)
	c := dialClient(t, ctx, s)

	rec := newLevelWatcher(t, ctx, c)
	setMemAvailable(t, s, 290<<20) // warning
	assert.Equal(t, oomdpb.PressureLevel_warning, rec.next(t, ctx))
	setMemAvailable(t, s, 150<<20) // imminentOom
	assert.Equal(t, oomdpb.PressureLevel_imminentOom, rec.next(t, ctx))
	setMemAvailable(t, s, 210<<20) // above 200 MiB, not above 216 MiB: stays
	waitTicks(t, ctx, c, 10)
	assert.Equal(t, oomdpb.PressureLevel_imminentOom, status(t, ctx, c).Level())
	setMemAvailable(t, s, 1<<30) // above every bound: normal
	assert.Equal(t, oomdpb.PressureLevel_normal, rec.next(t, ctx))

	// The watcher and the event subscription are separate pushes: wait for the event.
	_, err := c.WaitEvent(ctx, "levelChanged to normal", func(e policy.Event) bool {
		return e.Kind == policy.EventLevelChanged && e.Reason == "imminentOom->normal"
	})
	require.NoError(t, err)
	var reasons []string
	for _, e := range c.Events() {
		if e.Kind == policy.EventLevelChanged {
			reasons = append(reasons, e.Reason)
		}
	}
	assert.Equal(t, []string{"normal->warning", "warning->imminentOom", "imminentOom->normal"}, reasons)
	require.Eventually(t, func() bool {
		_, err := c.FindAudit(ctx, func(r policy.AuditRecord) bool {
			return r.Kind == policy.EventLevelChanged && r.Reason == "imminentOom->normal"
		})
		return err == nil
	}, 20*time.Second, 10*time.Millisecond, "level changes reach logd's journal")
	assert.False(t, lastReboot(t, ctx, c).Valid(), "a first boot has no last reboot")
	assert.False(t, status(t, ctx, c).HaltClaimed())
	require.NoError(t, s.stop(20*time.Second))
}

type watcherHandle struct{ got chan oomdpb.PressureLevel }

func newLevelWatcher(t *testing.T, ctx context.Context, c *ctlclient.Client) watcherHandle {
	t.Helper()
	h := watcherHandle{got: make(chan oomdpb.PressureLevel, 16)}
	f, rel := c.Ctl.WatchLevels(ctx, func(p oomdpb.Control_watchLevels_Params) error {
		return p.SetWatcher(oomdpb.LevelWatcher_ServerToClient(levelRecorder(h)))
	})
	t.Cleanup(rel)
	res, err := f.Struct()
	require.NoError(t, err)
	require.Equal(t, oomdpb.PressureLevel_normal, res.Level())
	return h
}

func (h watcherHandle) next(t *testing.T, ctx context.Context) oomdpb.PressureLevel {
	t.Helper()
	select {
	case l := <-h.got:
		return l
	case <-ctx.Done():
		t.Fatal("no level change delivered")
	}
	return 0
}

// TestSystemOOMGraceful (a): every service stops on request, so execd acknowledges
// long before the bound (30 s); the record says graceful, the next boot reports it
// once and serves it over lastReboot, and a reboot request there is refused only after
// the token is claimed.
func TestSystemOOMGraceful(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	record := filepath.Join(t.TempDir(), "reboot.rec")
	s := startSysStack(t, record, sysHog("hog-a", "", 2000)+sysHog("hog-b", "", 2000), 30000, 1<<30)
	c := dialClient(t, ctx, s)
	waitReady(t, ctx, s, c, "hog-a", "hog-b")

	setMemAvailable(t, s, 50<<20)
	claimed, err := c.WaitEvent(ctx, "haltClaimed", ctlclient.IsKind("", "haltClaimed"))
	require.NoError(t, err)
	assert.Equal(t, "oom", claimed.Reason)
	marker := s.waitLine("oomd: rebooting reason=oom", 60*time.Second)
	require.NoError(t, s.wait(30*time.Second), "execd ends with oomd's exit:0")

	assert.Contains(t, marker, "graceful=true timedOut=false")
	rec := readRecord(t, record)
	assert.Equal(t, sysoom.StateComplete, rec.State)
	assert.Equal(t, sysoom.ReasonOOM, rec.Reason)
	assert.True(t, rec.Graceful)
	assert.Empty(t, rec.NotStopped)
	assert.Less(t, rec.TeardownMs, uint32(10000), "the ack ends the wait: far below the 30 s bound")
	for _, e := range c.Events() {
		assert.NotEqual(t, policy.EventRebootTimedOut, e.Kind)
	}
	t.Logf("graceful teardown: %d ms from the claim to the ack (bound 30000 ms)", rec.TeardownMs)

	// The next boot: reported once, served over RPC.
	s2 := startSysStack(t, record, "", 30000, 1<<30)
	s2.waitLine("oomd: last reboot reason=oom graceful=true", 20*time.Second)
	c2 := dialClient(t, ctx, s2)
	lr := lastReboot(t, ctx, c2)
	assert.True(t, lr.Valid())
	assert.Equal(t, oomdpb.RebootReason_oom, lr.Reason())
	assert.True(t, lr.Graceful())
	assert.Equal(t, rec.BootCount, lr.BootCount())
	require.NoError(t, s2.stop(20*time.Second))

	// And the boot after that does not repeat it.
	s3 := startSysStack(t, record, "", 30000, 1<<30)
	c3 := dialClient(t, ctx, s3)
	assert.False(t, lastReboot(t, ctx, c3).Valid())
	require.NoError(t, s3.stop(20*time.Second))
	assert.Equal(t, -1, s3.lines.index("oomd: last reboot"))
}

// TestSystemOOMTimesOut (b): one service ignores SIGTERM and has a 6 s stop timeout,
// so execd cannot acknowledge within the 1 s bound (6 s leaves room for 10 ms ticks that
// run late on a loaded host: the bound is counted in ticks). The bound fires exactly at
// claim + 1000 ms / 10 ms = 100 ticks, the record says timed out and names that service,
// and the next boot reads it.
func TestSystemOOMTimesOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	record := filepath.Join(t.TempDir(), "reboot.rec")
	s := startSysStack(t, record, sysHog("hog-ok", "", 2000)+sysHog("hog-stuck", `, "--ignore-sigterm"`, 6000), 1000, 1<<30)
	c := dialClient(t, ctx, s)
	waitReady(t, ctx, s, c, "hog-ok", "hog-stuck") // hog-stuck ignores SIGTERM from then on

	setMemAvailable(t, s, 50<<20)
	claimed, err := c.WaitEvent(ctx, "haltClaimed", ctlclient.IsKind("", "haltClaimed"))
	require.NoError(t, err)
	timedOut, err := c.WaitEvent(ctx, "rebootTimedOut", ctlclient.IsKind("", "rebootTimedOut"))
	require.NoError(t, err)
	// The bound runs on two clocks from the claim, whichever passes first: 100 ticks, or
	// 1000 ms of wall time (ticks that ran late). Normally they agree to within a tick.
	switch {
	case strings.HasSuffix(timedOut.Reason, " by=ticks"):
		assert.Equal(t, claimed.Tick+100, timedOut.Tick, "the bound is 100 ticks from the claim")
	case strings.HasSuffix(timedOut.Reason, " by=clock"):
		assert.LessOrEqual(t, timedOut.Tick, claimed.Tick+100, "the wall clock fired after the tick bound")
		t.Logf("the wall clock ended it %d ticks after the claim", timedOut.Tick-claimed.Tick)
	default:
		t.Fatalf("rebootTimedOut reason %q names no clock", timedOut.Reason)
	}
	assert.Contains(t, timedOut.Reason, "hog-stuck")
	assert.NotContains(t, timedOut.Reason, "hog-ok", "hog-ok stopped in time")

	marker := s.waitLine("oomd: rebooting reason=oom", 30*time.Second)
	assert.Contains(t, marker, "graceful=false timedOut=true")
	require.NoError(t, s.wait(60*time.Second))
	rec := readRecord(t, record)
	assert.Equal(t, sysoom.StateComplete, rec.State)
	assert.False(t, rec.Graceful)
	assert.Contains(t, rec.NotStopped, "hog-stuck")
	assert.NotContains(t, rec.NotStopped, "hog-ok")
	// Not before the 1 s bound, less the claim's offset into its tick and the shell's
	// step that follows it (at most two 10 ms ticks on a busy machine: 989 was seen).
	assert.GreaterOrEqual(t, rec.TeardownMs, uint32(980), "not before the 1 s bound")
	assert.Less(t, rec.TeardownMs, uint32(6000), "before execd could have acknowledged (hog-stuck's 6 s stop timeout)")
	for _, e := range c.Events() {
		if e.Kind == policy.EventRebootAcked {
			assert.True(t, strings.HasPrefix(e.Reason, "ignored: after the timeout"), "an ack after the bound is ignored: %+v", e)
		}
	}

	s2 := startSysStack(t, record, "", 30000, 1<<30)
	s2.waitLine("oomd: last reboot reason=oom graceful=false", 20*time.Second)
	c2 := dialClient(t, ctx, s2)
	lr := lastReboot(t, ctx, c2)
	require.True(t, lr.Valid())
	names, err := lr.NotStopped()
	require.NoError(t, err)
	var got []string
	for i := range names.Len() {
		n, _ := names.At(i)
		got = append(got, n)
	}
	assert.Contains(t, got, "hog-stuck")
	require.NoError(t, s2.stop(20*time.Second))
}

// TestRequestRebootRefusedOnceClaimed: a requested reboot claims the token; a second
// request and an OOM reading that follows are refused with the claimer named, recorded,
// and start no second teardown.
func TestRequestRebootRefusedOnceClaimed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	record := filepath.Join(t.TempDir(), "reboot.rec")
	s := startSysStack(t, record, sysHog("hog-a", "", 2000), 30000, 1<<30)
	c := dialClient(t, ctx, s)
	waitReady(t, ctx, s, c, "hog-a")
	reboot := func() error {
		f, rel := c.Ctl.RequestReboot(ctx, func(p oomdpb.Control_requestReboot_Params) error {
			p.SetReason(oomdpb.RebootReason_userRequest)
			return nil
		})
		defer rel()
		_, err := f.Struct()
		return err
	}
	require.NoError(t, reboot())
	err := reboot()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "halt token already claimed by userRequest at tick")
	s.waitLine("oomd: rebooting reason=userRequest", 60*time.Second)
	require.NoError(t, s.wait(30*time.Second))
	assert.Equal(t, sysoom.ReasonUserRequest, readRecord(t, record).Reason)
	assert.Equal(t, 1, s.lines.count("oomd: rebooting"), "one sequence")
}

// TestLevelsFromPSI: with PSI thresholds set, memory pressure raises the level while
// MemAvailable is plentiful, and says so in the reason; when pressure falls below the
// threshold minus the hysteresis the level goes back to normal.
func TestLevelsFromPSI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	record := filepath.Join(t.TempDir(), "reboot.rec")
	man := strings.Replace(sysManifest(record, ""), `"--meminfo", "${RUNTIME_DIR}/meminfo",`,
		`"--meminfo", "${RUNTIME_DIR}/meminfo", "--psi", "${RUNTIME_DIR}/psi",`, 1)
	pol := strings.Replace(sysPolicy(30000), `"hysteresisBytes": 16777216}`,
		`"hysteresisBytes": 16777216, "psiWarning": 1000, "psiImminentOom": 3000, "psiOom": 6000, "psiHysteresis": 500}`, 1)
	pol = strings.Replace(pol, `"oomTimeoutMs"`, `"victims": {"level": "off"}, "oomTimeoutMs"`, 1)
	psi := func(full string) string {
		return "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=" + full + " avg60=0.00 avg300=0.00 total=0\n"
	}
	s := startStack(t, man, map[string]string{"policy.json": pol, "meminfo": "MemAvailable:   1048576 kB\n", "psi": psi("0.00")})
	c := dialClient(t, ctx, s)
	rec := newLevelWatcher(t, ctx, c)
	setPSI := func(full string) {
		tmp := s.path("psi.tmp")
		require.NoError(t, os.WriteFile(tmp, []byte(psi(full)), 0o600))
		require.NoError(t, os.Rename(tmp, s.path("psi")))
	}
	setPSI("35.50")
	assert.Equal(t, oomdpb.PressureLevel_imminentOom, rec.next(t, ctx))
	ev, err := c.WaitEvent(ctx, "levelChanged by PSI", ctlclient.IsKind("", "levelChanged"))
	require.NoError(t, err)
	assert.Equal(t, "normal->imminentOom psi-full-avg10=35.50%", ev.Reason)
	setPSI("26.00") // below 30 % but not below 25 %: stays
	waitTicks(t, ctx, c, 10)
	assert.Equal(t, oomdpb.PressureLevel_imminentOom, status(t, ctx, c).Level())
	setPSI("1.00")
	assert.Equal(t, oomdpb.PressureLevel_normal, rec.next(t, ctx))
	assert.False(t, status(t, ctx, c).HaltClaimed())
	require.NoError(t, s.stop(20*time.Second))
}
