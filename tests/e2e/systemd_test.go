package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/sdnotify/sdnotifytest"
)

// The stack as systemd runs it (packaging/systemd/oomwatch.service: Type=notify,
// WatchdogSec, NotifyAccess=main), against a fake notify socket: execd says READY=1 once
// oomd is ready and STOPPING=1 when it stops; the watchdog pings come from oomd's tick
// loop, through execd's relay (so systemd sees every message from the main pid), and
// oomd holds the relay, not systemd's socket: a frozen oomd stops the pings and systemd
// restarts the unit.
func TestSystemdReadyAndWatchdogPings(t *testing.T) {
	notify := sdnotifytest.Listen(t)
	t.Setenv("NOTIFY_SOCKET", notify.Path)
	t.Setenv("WATCHDOG_USEC", "200000") // pings every 100 ms
	os.Unsetenv("WATCHDOG_PID")

	s := startStack(t, manifest(fmt.Sprintf(hogEntry, "", 1000)), map[string]string{"policy.json": policyJSON})
	execd, oomd := s.cmd.Process.Pid, pidOf(t, s, "oomd")

	m, skipped, err := notify.Wait("READY=1", 20*time.Second)
	require.NoError(t, err, "READY=1 (before it: %v)", skipped)
	assert.Equal(t, execd, m.Pid, "READY=1 comes from the unit's main process")
	s.waitLine("oomd: ready", time.Second) // already printed: READY=1 waits for it

	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", oomd))
	require.NoError(t, err)
	assert.Contains(t, strings.Split(string(env), "\x00"), "NOTIFY_SOCKET="+s.path("notify.sock"), "oomd pings execd's relay")
	assert.NotContains(t, string(env), "NOTIFY_SOCKET="+notify.Path, "oomd does not hold systemd's socket")
	for i := range 3 {
		m, skipped, err := notify.Wait("WATCHDOG=1", 10*time.Second)
		require.NoError(t, err, "watchdog ping %d (other messages: %v)", i+1, skipped)
		assert.Equal(t, execd, m.Pid, "ping %d relayed by execd", i+1)
		assert.Empty(t, skipped, "nothing but pings once the stack is up")
	}
	// The pings are oomd's: stopped, it sends none (one may be on its way), and none
	// reach systemd over a second, ten ping intervals.
	require.NoError(t, syscall.Kill(oomd, syscall.SIGSTOP))
	notify.Received()
	pings := 0
	for ; pings < 10; pings++ {
		if _, _, err := notify.Wait("WATCHDOG=1", time.Second); err != nil {
			require.ErrorIs(t, err, sdnotifytest.ErrTimeout)
			break
		}
	}
	assert.LessOrEqual(t, pings, 1, "pings while oomd was stopped")
	require.NoError(t, syscall.Kill(oomd, syscall.SIGCONT))
	_, _, err = notify.Wait("WATCHDOG=1", 10*time.Second)
	require.NoError(t, err, "pings again once oomd runs")

	require.NoError(t, s.stop(20*time.Second))
	// execd sent it before it exited; the datagram waits in the socket if not yet read.
	m, skipped, err = notify.Wait("STOPPING=1", 10*time.Second)
	require.NoError(t, err, "STOPPING=1 (other messages: %v)", skipped)
	assert.Equal(t, execd, m.Pid, "STOPPING=1 from the main process")
	for _, m := range append(skipped, notify.Received()...) {
		assert.Equal(t, sdnotifytest.Message{State: "WATCHDOG=1", Pid: execd}, m, "only the relayed pings besides READY and STOPPING")
	}
}
