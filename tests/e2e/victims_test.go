package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

// Pressure victims on the real stack (issue 14): MemAvailable comes from the test's
// meminfo file (sysoom_test.go), so the level is whatever the test writes, while each
// subject's bytes are the kernel's count of its cgroup. Three hogs, each holding its
// arena from the start and never growing:
//
//	leaker  96 MiB, publishes nothing (a program that never heard of oomd)
//	svc-b   32 MiB, publishes
//	svc-a   16 MiB, publishes
//
// With a 1 GiB hard limit the scores are about 97, 33 and 17 (bytes per mille of the
// limit, plus each Go process's own few MiB), so without preferences the leaker is the
// victim and svc-b the first runner-up.

// victimSettle is the policy's settleTicks: 100 ticks of 10 ms, long enough that the
// test's checks after the first kill run inside the hold.
const victimSettle = 100

func victimPolicy(dry bool) string {
	return fmt.Sprintf(`{"softBytes": 536870912, "hardBytes": 1073741824, "sampleMs": 10, "killBudget": 4, "killWindowTicks": 100,
  "levels": {"warningBytes": 314572800, "imminentOomBytes": 209715200, "oomBytes": 104857600, "hysteresisBytes": 16777216},
  "victims": {"settleTicks": %d, "dryRun": %t},
  "oomTimeoutMs": 30000}`, victimSettle, dry)
}

// victimHogs are the three subjects; prefs gives a manifest preference per id.
func victimHogs(prefs map[string]string) string {
	var out string
	for _, h := range []struct {
		id    string
		bytes int
		flags string
	}{{"leaker", 96 << 20, `"--no-publish", `}, {"svc-a", 16 << 20, ""}, {"svc-b", 32 << 20, ""}} {
		pref := ""
		if p, ok := prefs[h.id]; ok {
			pref = fmt.Sprintf(`, "preference": %q`, p)
		}
		out += fmt.Sprintf(`,
  {"id": %q, "argv": ["${BIN}/hog", %s"--step-every", "0", "--start-bytes", "%d", "--max-bytes", "%d"],
   "dependsOn": ["oomd"], "stopTimeoutMs": 2000%s}`, h.id, h.flags, h.bytes, h.bytes, pref)
	}
	return out
}

var victimIDs = []string{"leaker", "svc-a", "svc-b"}

// startVictimStack starts the stack at MemAvailable 1 GiB (level normal) and returns
// once oomd holds each hog's whole arena in its reading.
func startVictimStack(t *testing.T, ctx context.Context, prefs map[string]string, dry bool) (*stack, *ctlclient.Client) {
	t.Helper()
	record := filepath.Join(t.TempDir(), "reboot.rec")
	s := startStack(t, sysManifest(record, victimHogs(prefs)), map[string]string{
		"policy.json": victimPolicy(dry), "meminfo": fmt.Sprintf("MemAvailable:   %d kB\n", 1<<20)})
	c := dialClient(t, ctx, s)
	waitReady(t, ctx, s, c, victimIDs...)
	for id, want := range map[string]uint64{"leaker": 96 << 20, "svc-a": 16 << 20, "svc-b": 32 << 20} {
		for subjectStatus(t, ctx, c, id).Bytes() < want {
			waitTicks(t, ctx, c, 1)
		}
	}
	return s, c
}

var victimReasonRE = regexp.MustCompile(`^pressure victim: level=imminentOom score=(\d+)( pref=\w+)? runners-up=(\S+)$`)

// checkVictimReason checks the reason's score against the decision's own bytes and
// limit (with pts preference points) and returns the runners-up text.
func checkVictimReason(t *testing.T, e policy.Event, pts int64) string {
	t.Helper()
	m := victimReasonRE.FindStringSubmatch(e.Reason)
	require.NotNil(t, m, "victim reason %q", e.Reason)
	score, _ := strconv.ParseInt(m[1], 10, 64)
	assert.Equal(t, max(0, int64(e.Bytes*1000/e.Limit)+pts), score, "score of %s in %q", e.Subject, e.Reason)
	return m[3]
}

// TestPressureVictim: at imminentOom the leaker, which publishes nothing, is the one
// killed, whole; the other two live and stay registered; no second victim is picked
// until the first kill was observed and the settle ticks passed (then svc-b, the
// runner-up, is); the level going back to normal stops it; no halt, no reboot.
func TestPressureVictim(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, c := startVictimStack(t, ctx, nil, false)
	leakerPid := pidOf(t, s, "leaker")

	st := status(t, ctx, c)
	victim, _ := st.Victim()
	hold, _ := st.VictimHold()
	assert.Equal(t, "leaker", victim, "the preview names the victim before the pressure")
	assert.Equal(t, "level=normal below imminentOom", hold)

	setMemAvailable(t, s, 150<<20) // imminentOom
	decided, err := c.WaitEvent(ctx, "a victim decision", func(e policy.Event) bool { return e.Kind == policy.EventKillDecided })
	require.NoError(t, err)
	require.Equal(t, "leaker", decided.Subject, "the victim: %q", decided.Reason)
	runnersUp := checkVictimReason(t, decided, 0)
	assert.Regexp(t, `^svc-b:\d+,svc-a:\d+$`, runnersUp)
	killed, err := c.WaitEvent(ctx, "leaker killed", ctlclient.IsKind("leaker", "killed"))
	require.NoError(t, err)
	assert.False(t, processAlive(leakerPid), "the leaker is gone at its killed event")
	// The terminate waited for the record to be durable, so it is in logd by now.
	rec, err := c.FindAudit(ctx, func(r policy.AuditRecord) bool { return r.Kind == policy.EventKillDecided && r.Subject == "leaker" })
	require.NoError(t, err)
	assert.Equal(t, decided.Reason, rec.Record.Reason, "the audit record says why")
	s.waitLine(fmt.Sprintf("oomd: kill app=leaker bytes=%d", killed.Bytes), 10*time.Second)
	line := s.waitLine("kill decided for leaker: ", 10*time.Second) // the one-line log says why
	assert.Contains(t, line, `"seq": `+strconv.FormatUint(decided.Seq, 10)+",")
	assert.Contains(t, s.lines.dump(), `"reason": "`+decided.Reason+`"`)

	// Inside the hold: the other two live and are registered, and the preview says why
	// nothing more happens.
	st = status(t, ctx, c)
	require.Less(t, st.Tick(), killed.Tick+victimSettle, "the checks below must run inside the settle ticks")
	for _, id := range []string{"svc-a", "svc-b"} {
		assert.True(t, processAlive(pidOf(t, s, id)), "%s is alive", id)
		assert.NotEqual(t, "exited", subjectStatus(t, ctx, c, id).State().String(), "%s is registered", id)
	}
	hold, _ = st.VictimHold()
	assert.Equal(t, fmt.Sprintf("settling until tick %d", killed.Tick+victimSettle), hold)

	// The level stays: the next victim comes only after the settle ticks.
	second, err := c.WaitEvent(ctx, "a second victim", func(e policy.Event) bool {
		return e.Kind == policy.EventKillDecided && e.Seq > decided.Seq
	})
	require.NoError(t, err)
	assert.Equal(t, "svc-b", second.Subject, "the first runner-up")
	assert.GreaterOrEqual(t, second.Tick, killed.Tick+victimSettle, "no victim before the settle ticks passed")
	checkVictimReason(t, second, 0)

	// Memory comes back: nothing more is picked (svc-b's decision is final).
	setMemAvailable(t, s, 1<<30)
	_, err = c.WaitEvent(ctx, "level back to normal", func(e policy.Event) bool {
		return e.Kind == policy.EventLevelChanged && e.Reason == "imminentOom->normal"
	})
	require.NoError(t, err)
	_, err = c.WaitEvent(ctx, "svc-b killed", ctlclient.IsKind("svc-b", "killed"))
	require.NoError(t, err)
	waitTicks(t, ctx, c, victimSettle+10)
	n, err := c.CountKind(ctx, "svc-a", "killDecided")
	require.NoError(t, err)
	assert.Zero(t, n, "svc-a is never picked once the level is normal")
	assert.True(t, processAlive(pidOf(t, s, "svc-a")))
	for _, e := range c.Events() {
		assert.NotEqual(t, policy.EventHaltClaimed, e.Kind, "no halt: %+v", e)
	}
	assert.False(t, status(t, ctx, c).HaltClaimed())
	assert.Equal(t, -1, s.lines.index("oomd: rebooting"))
	assert.Equal(t, 2, s.lines.count("oomd: kill app="))
	require.NoError(t, s.stop(20*time.Second))
}

// TestPressureVictimPreferences: the manifest's preference changes the choice. prefer
// adds 500 points (the smallest subject goes first); avoid takes 500 (the leaker is
// spared while another candidate scores above it).
func TestPressureVictimPreferences(t *testing.T) {
	for _, tc := range []struct {
		name  string
		prefs map[string]string
		want  string
		pts   int64
	}{
		{"prefer", map[string]string{"svc-a": "prefer"}, "svc-a", 500},
		{"avoid", map[string]string{"leaker": "avoid"}, "svc-b", 0},
		{"never", map[string]string{"leaker": "never", "svc-b": "avoid"}, "svc-a", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			s, c := startVictimStack(t, ctx, tc.prefs, false)
			setMemAvailable(t, s, 150<<20)
			decided, err := c.WaitEvent(ctx, "a victim decision", func(e policy.Event) bool { return e.Kind == policy.EventKillDecided })
			require.NoError(t, err)
			require.Equal(t, tc.want, decided.Subject, "the victim: %q", decided.Reason)
			checkVictimReason(t, decided, tc.pts)
			if tc.pts > 0 {
				assert.Contains(t, decided.Reason, " pref=prefer ")
			}
			_, err = c.WaitEvent(ctx, tc.want+" killed", ctlclient.IsKind(tc.want, "killed"))
			require.NoError(t, err)
			s.waitLine("oomd: kill app="+tc.want+" bytes=", 10*time.Second)
			for _, id := range victimIDs {
				if id != tc.want {
					assert.True(t, processAlive(pidOf(t, s, id)), "%s is alive", id)
				}
			}
			require.NoError(t, s.stop(20*time.Second))
		})
	}
}

// TestPressureVictimDryRun: with victims.dryRun the core reports whom it would kill
// and why (victimWouldKill, once per episode) and kills no one.
func TestPressureVictimDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, c := startVictimStack(t, ctx, nil, true)
	setMemAvailable(t, s, 150<<20)
	would, err := c.WaitEvent(ctx, "victimWouldKill", func(e policy.Event) bool { return e.Kind == policy.EventVictimWouldKill })
	require.NoError(t, err)
	assert.Equal(t, "leaker", would.Subject)
	checkVictimReason(t, would, 0)
	waitTicks(t, ctx, c, 50)
	st := status(t, ctx, c)
	hold, _ := st.VictimHold()
	assert.Equal(t, "dry run", hold)
	assert.Equal(t, "imminentOom", st.Level().String())
	for _, e := range c.Events() {
		assert.NotContains(t, []policy.EventKind{policy.EventKillDecided, policy.EventKillRequested, policy.EventKilled}, e.Kind,
			"a dry run kills no one: %+v", e)
	}
	n, err := c.CountKind(ctx, "leaker", "victimWouldKill")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "once per episode, not once per tick")
	for _, id := range victimIDs {
		assert.True(t, processAlive(pidOf(t, s, id)), "%s is alive", id)
	}
	assert.Equal(t, -1, s.lines.index("oomd: kill app="))
	require.NoError(t, s.stop(20*time.Second))
}
