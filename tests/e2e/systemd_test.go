package e2e

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/sdnotify/sdnotifytest"
)

// The stack as systemd runs it (packaging/systemd/oomwatch.service: Type=notify,
// WatchdogSec, NotifyAccess=all), against a fake notify socket: execd says READY=1 once
// oomd is ready and STOPPING=1 when it stops; the watchdog pings come from oomd's tick
// loop and from no other process, so a frozen oomd stops them and systemd restarts the
// unit.
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

	for i := range 3 {
		m, skipped, err := notify.Wait("WATCHDOG=1", 10*time.Second)
		require.NoError(t, err, "watchdog ping %d (other messages: %v)", i+1, skipped)
		assert.Equal(t, oomd, m.Pid, "ping %d comes from oomd", i+1)
		assert.Empty(t, skipped, "nothing but pings once the stack is up")
	}

	require.NoError(t, s.stop(20*time.Second))
	// execd sent it before it exited; the datagram waits in the socket if not yet read.
	m, skipped, err = notify.Wait("STOPPING=1", 10*time.Second)
	require.NoError(t, err, "STOPPING=1 (other messages: %v)", skipped)
	assert.Equal(t, execd, m.Pid, "STOPPING=1 from the main process")
	for _, m := range append(skipped, notify.Received()...) {
		assert.Equal(t, sdnotifytest.Message{State: "WATCHDOG=1", Pid: oomd}, m, "only oomd's pings besides READY and STOPPING")
	}
}
