package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/sdnotify"
	"oomd.dev/oomd/internal/sdnotify/sdnotifytest"
)

// environ reads what a test child wrote with --environ.
func (h *harness) environ(file string) map[string]string {
	h.t.Helper()
	h.waitFor(file, func() bool { _, err := os.Stat(h.path(file)); return err == nil })
	b, err := os.ReadFile(h.path(file))
	require.NoError(h.t, err)
	env := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

// Under systemd execd says READY=1 only once the watchdog is ready, and STOPPING=1 when
// it stops; the notify socket and the watchdog interval go to the watchdog alone, never
// to a subject (a subject could otherwise feed or trip the unit's watchdog).
func TestSystemdNotify(t *testing.T) {
	notify := sdnotifytest.Listen(t)
	t.Setenv("NOTIFY_SOCKET", notify.Path)
	t.Setenv("WATCHDOG_USEC", "30000000")
	os.Unsetenv("WATCHDOG_PID") // systemd sets execd's; the test cannot know it in advance

	gate := filepath.Join(t.TempDir(), "gate")
	require.NoError(t, unix.Mkfifo(gate, 0o600))

	h := start(t, []svc{
		watchdog("--gate", gate, "--environ", "${RUNTIME_DIR}/env.wd"),
		child("app", "--environ", "${RUNTIME_DIR}/env.app"),
	})
	execd := h.cmd.Process.Pid
	h.waitEvent("start app")
	for _, m := range notify.Received() {
		assert.NotEqual(t, "READY=1", m.State, "READY=1 before the watchdog called ready")
	}
	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = g.Write([]byte{1})
	require.NoError(t, err)
	g.Close()

	m, skipped, err := notify.Wait("READY=1", deadline)
	require.NoError(t, err, "READY=1 from execd (other messages: %v)", skipped)
	assert.Equal(t, execd, m.Pid, "READY=1 comes from the main pid")
	assert.Empty(t, skipped, "nothing but READY=1 before it")

	app := h.environ("env.app")
	for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		assert.NotContains(t, app, v, "a subject's environment")
	}
	assert.Equal(t, "app", app["OOMD_SUBJECT"], "the env file is the subject's")
	wd := h.environ("env.wd")
	relay := h.path(sdnotify.RelaySocket)
	assert.Equal(t, relay, wd["NOTIFY_SOCKET"], "the watchdog feeds systemd's watchdog through execd's relay")
	assert.Equal(t, "30000000", wd["WATCHDOG_USEC"])
	assert.NotContains(t, wd, "WATCHDOG_PID", "it names execd, not the watchdog")
	fi, err := os.Stat(relay)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the relay is owner-only")

	// A process that is not the watchdog service's (this test, as a subject that found
	// the relay would) gets nothing through it, a ping included; the watchdog's own
	// pings are e2e/TestSystemdReadyAndWatchdogPings'.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: relay, Net: "unixgram"})
	require.NoError(t, err)
	for _, msg := range []string{"READY=1", "STOPPING=1", "MAINPID=1", "WATCHDOG=trigger", "WATCHDOG=1\nREADY=1", "WATCHDOG=1"} {
		_, err := c.Write([]byte(msg))
		require.NoError(t, err)
	}
	c.Close()

	assert.Equal(t, 0, h.stop())
	m, skipped, err = notify.Wait("STOPPING=1", deadline)
	require.NoError(t, err, "STOPPING=1 from execd (other messages: %v)", skipped)
	assert.Equal(t, execd, m.Pid)
	assert.Empty(t, skipped, "nothing between READY=1 and STOPPING=1, none of the relay's messages")
	assert.Empty(t, notify.Received(), "nothing after STOPPING=1 either (execd has exited)")
}

// A watchdog systemd set for another pid is not execd's to hand on; the notify socket
// still reaches no child, and READY=1 is still sent.
func TestSystemdWatchdogForAnotherPidIsNotPassedOn(t *testing.T) {
	notify := sdnotifytest.Listen(t)
	t.Setenv("NOTIFY_SOCKET", notify.Path)
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	h := start(t, []svc{watchdog("--environ", "${RUNTIME_DIR}/env.wd")})
	_, _, err := notify.Wait("READY=1", deadline)
	require.NoError(t, err)
	wd := h.environ("env.wd")
	for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		assert.NotContains(t, wd, v, "the watchdog's environment")
	}
}

// SIGHUP to execd (the unit's ExecReload) reaches the watchdog alone, and execd lives on.
func TestSIGHUPIsPassedToTheWatchdogOnly(t *testing.T) {
	h := start(t, []svc{watchdog(), withDeps(child("app", "--ready"), "wd")})
	h.waitEvent("ready app")
	require.NoError(t, h.cmd.Process.Signal(unix.SIGHUP))
	h.waitEvent("sighup wd")
	require.NoError(t, h.cmd.Process.Signal(unix.SIGHUP))
	h.waitFor("a second sighup wd", func() bool {
		n := 0
		for _, e := range h.events() {
			if e == "sighup wd" {
				n++
			}
		}
		return n == 2
	})
	assert.Equal(t, -1, index(h.events(), "sighup app"), "a subject got the watchdog's SIGHUP")
	select {
	case <-h.waited:
		t.Fatalf("execd exited on SIGHUP: %v", h.err)
	default:
	}
	assert.Equal(t, 0, h.stop())
}
