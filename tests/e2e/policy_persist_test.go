package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

// restartingManifest is manifest("") with oomd restarted by execd when it dies.
func restartingManifest() string {
	return strings.Replace(manifest(""), `"role": "watchdog", "critical": true, "dependsOn": ["logd"], "stopTimeoutMs": 2000}`,
		`"role": "watchdog", "critical": true, "dependsOn": ["logd"], "stopTimeoutMs": 2000, "restart": "on-failure"}`, 1)
}

// lastPidOf is the pid of subject's newest instance, from execd's "started" lines.
func lastPidOf(t *testing.T, s *stack, subject string) int {
	t.Helper()
	var pid int
	for _, line := range strings.Split(s.lines.dump(), "\n") {
		if i := strings.Index(line, `started	{"subject": "`+subject+`"`); i >= 0 {
			j := strings.Index(line, `"pid": `)
			fmt.Sscanf(line[j+len(`"pid": `):], "%d", &pid)
		}
	}
	require.NotZero(t, pid, "no started line for %s", subject)
	return pid
}

// TestPolicySurvivesRestartAndSIGHUP: setPolicy is durable in the file oomd was started
// with, a restarted oomd comes back with the same version and content, SIGHUP re-reads
// the file (a valid one is the next version; an invalid one changes nothing and is
// logged with the field), and SIGHUP never ends oomd.
func TestPolicySurvivesRestartAndSIGHUP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m := restartingManifest()
	s := startStack(t, m, map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)

	require.NoError(t, c.UpdatePolicy(ctx, func(p *policy.Policy) { p.HardBytes = 48 << 20; p.SoftBytes = 24 << 20 }))
	p, v, err := c.GetPolicy(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), v)
	var onDisk policy.Policy
	b, err := os.ReadFile(s.path("policy.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &onDisk))
	assert.Equal(t, p, onDisk, "setPolicy returned after the new policy was in the file")

	// oomd dies (SIGKILL: nothing flushed on the way out); execd restarts it.
	require.NoError(t, syscall.Kill(lastPidOf(t, s, "oomd"), syscall.SIGKILL))
	require.Eventually(t, func() bool { return s.lines.count("oomd: ready") >= 2 }, 30*time.Second, 10*time.Millisecond)
	c2, err := ctlclient.Dial(ctx, s.path("oomd.sock"), zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(c2.Close)
	p2, v2, err := c2.GetPolicy(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), v2, "the version survives the restart")
	assert.Equal(t, p, p2, "and so does the content")

	// SIGHUP with a valid file: the next version.
	pid := lastPidOf(t, s, "oomd")
	require.NoError(t, os.WriteFile(s.path("policy.json"), []byte(`{"softBytes": 33554432, "hardBytes": 67108864, "sampleMs": 10, "killBudget": 4, "killWindowTicks": 100}`), 0o600))
	require.NoError(t, syscall.Kill(pid, syscall.SIGHUP))
	require.Eventually(t, func() bool {
		p, v, err := c2.GetPolicy(ctx)
		return err == nil && v == 3 && p.HardBytes == 64<<20
	}, 20*time.Second, 10*time.Millisecond, "SIGHUP put the file's policy in force as version 3")

	// SIGHUP with an invalid file: nothing changes, the field is named, oomd lives on.
	require.NoError(t, os.WriteFile(s.path("policy.json"), []byte(`{"softBytes": 100, "hardBytes": 50}`), 0o600))
	require.NoError(t, syscall.Kill(pid, syscall.SIGHUP))
	line := s.waitLine("SIGHUP: policy file rejected whole", 20*time.Second)
	assert.Contains(t, line, "hardBytes")
	p3, v3, err := c2.GetPolicy(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), v3)
	assert.Equal(t, uint64(64<<20), p3.HardBytes)
	assert.Equal(t, pid, lastPidOf(t, s, "oomd"), "SIGHUP did not end oomd")
	require.NoError(t, c2.WaitTicks(ctx, 2))
}
