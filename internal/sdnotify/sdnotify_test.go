package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/sdnotify/sdnotifytest"
	"oomd.dev/oomd/internal/testutil"
)

const bound = 10 * time.Second

// clearEnv unsets the protocol's variables for the test (the test binary may itself run
// under systemd).
func clearEnv(t *testing.T) {
	for _, v := range Vars {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
}

// drain returns every state received up to a sentinel sent after the calls under test;
// datagrams from one sender on one socket arrive in order, so nothing is missed.
func drain(t *testing.T, s *sdnotifytest.Socket) []string {
	t.Helper()
	_, err := daemon.SdNotify(false, "X_SENTINEL=1")
	require.NoError(t, err)
	_, before, err := s.Wait("X_SENTINEL=1", bound)
	require.NoError(t, err)
	var states []string
	for _, m := range before {
		assert.Equal(t, os.Getpid(), m.Pid, "sender of %s", m.State)
		states = append(states, m.State)
	}
	return states
}

func TestNoSocketIsANoOp(t *testing.T) {
	clearEnv(t)
	t.Setenv(EnvWatchdogUsec, "1000000")
	log := zaptest.NewLogger(t)
	Ready(log)
	Stopping(log)
	assert.Nil(t, WatchdogEnv(), "no socket: nothing to pass on")
	w := NewWatchdog(log)
	assert.Nil(t, w)
	w.Beat() // a nil Watchdog does nothing
	assert.Zero(t, w.Interval())
}

// TestNotifyNeverBlocks: a systemd that stopped reading its socket (a full queue) costs
// dropped messages, each said, never a blocked caller: oomd pings from its owner loop.
// (go-systemd's SdNotify blocked here for ever.)
func TestNotifyNeverBlocks(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(testutil.SocketDir(t), "deaf")
	deaf, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	defer deaf.Close() // never read
	t.Setenv(EnvSocket, path)
	done := make(chan error, 1)
	go func() {
		for range 1 << 20 {
			if _, err := send(daemon.SdNotifyWatchdog); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, unix.EAGAIN, "a full queue is said, not waited out")
	case <-time.After(10 * time.Second):
		t.Fatal("notify blocked on a socket nobody reads")
	}
}

func TestReadyAndStopping(t *testing.T) {
	clearEnv(t)
	s := sdnotifytest.Listen(t)
	t.Setenv(EnvSocket, s.Path)
	log := zaptest.NewLogger(t)
	Ready(log)
	Stopping(log)
	assert.Equal(t, []string{"READY=1", "STOPPING=1"}, drain(t, s))
}

func TestWatchdogEnv(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name       string
		usec, wpid string
		want       []string
	}{
		{"no watchdog", "", "", nil},
		{"for us", "2000000", me, []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=2000000"}},
		{"no pid given", "2000000", "", []string{"NOTIFY_SOCKET=/n", "WATCHDOG_USEC=2000000"}},
		{"for another pid", "2000000", "1", nil},
		{"garbage", "soon", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(EnvSocket, "/n")
			if tc.usec != "" {
				t.Setenv(EnvWatchdogUsec, tc.usec)
			}
			if tc.wpid != "" {
				t.Setenv(EnvWatchdogPID, tc.wpid)
			}
			assert.Equal(t, tc.want, WatchdogEnv(), tc.name)
		})
	}
}

func TestWatchdogPingsAtHalfTheInterval(t *testing.T) {
	clearEnv(t)
	s := sdnotifytest.Listen(t)
	t.Setenv(EnvSocket, s.Path)
	t.Setenv(EnvWatchdogUsec, "10000000") // 10 s
	var now time.Time
	w := newWatchdog(zaptest.NewLogger(t), func() time.Time { return now })
	require.NotNil(t, w)
	assert.Equal(t, 10*time.Second, w.Interval())

	now = time.Unix(1000, 0)
	var got []string
	for _, step := range []struct {
		after time.Duration
		ping  bool
	}{
		{0, true}, // the first beat pings at once
		{time.Second, false},
		{3 * time.Second, false}, // 4 s since the last ping
		{time.Second, true},      // 5 s: half the interval
		{4999 * time.Millisecond, false},
		{time.Millisecond, true},
	} {
		now = now.Add(step.after)
		w.Beat()
		got = append(got, drain(t, s)...)
		if step.ping {
			assert.Equal(t, []string{"WATCHDOG=1"}, got, "at %v", now)
		} else {
			assert.Empty(t, got, "at %v", now)
		}
		got = nil
	}
	assert.False(t, w.warned, "beats 1 s apart are well within half the interval")
	now = now.Add(6 * time.Second)
	w.Beat()
	assert.True(t, w.warned, "a 6 s gap against a 10 s watchdog is said")
}

func TestWatchdogForAnotherPidIsNotFed(t *testing.T) {
	clearEnv(t)
	t.Setenv(EnvSocket, "/nonexistent/notify")
	t.Setenv(EnvWatchdogUsec, "10000000")
	t.Setenv(EnvWatchdogPID, "1")
	assert.Nil(t, NewWatchdog(zaptest.NewLogger(t)))
}

// Without a watchdog for this process there is no relay, and a nil relay is inert.
func TestNoWatchdogNoRelay(t *testing.T) {
	clearEnv(t)
	s := sdnotifytest.Listen(t)
	t.Setenv(EnvSocket, s.Path) // a notify socket, but no WATCHDOG_USEC
	r, err := NewRelay(t.TempDir(), zaptest.NewLogger(t), os.Getpid)
	require.NoError(t, err)
	require.Nil(t, r)
	assert.Nil(t, r.Env())
	r.Run()
	r.Close()
}

// The relay passes on a ping from the watchdog service's process, as this process, and
// nothing else: not another message, not a ping from any other process, not a second
// ping within a quarter interval.
func TestRelayPassesOnlyTheWatchdogsPings(t *testing.T) {
	clearEnv(t)
	s := sdnotifytest.Listen(t)
	t.Setenv(EnvSocket, s.Path)
	t.Setenv(EnvWatchdogUsec, "20000000") // 20 s: a ping at most every 5 s
	dir := t.TempDir()
	var sender atomic.Int64
	sender.Store(int64(os.Getpid()) + 1) // not us, at first
	r, err := NewRelay(dir, zaptest.NewLogger(t), func() int { return int(sender.Load()) })
	require.NoError(t, err)
	defer r.Close()
	go r.Run()
	path := filepath.Join(dir, RelaySocket)
	assert.Equal(t, []string{EnvSocket + "=" + path, EnvWatchdogUsec + "=20000000"}, r.Env())
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	defer c.Close()
	send := func(msgs ...string) {
		for _, msg := range msgs {
			_, err := c.Write([]byte(msg))
			require.NoError(t, err)
		}
	}
	send("WATCHDOG=1") // from a process that is not the watchdog service's
	_, _, err = s.Wait("WATCHDOG=1", 200*time.Millisecond)
	require.ErrorIs(t, err, sdnotifytest.ErrTimeout, "a ping from another process was passed on")
	sender.Store(int64(os.Getpid()))
	send("READY=1", "WATCHDOG=1\n", "STATUS=x", "WATCHDOG=trigger", "WATCHDOG=1", "WATCHDOG=1")
	m, skipped, err := s.Wait("WATCHDOG=1", bound)
	require.NoError(t, err)
	assert.Equal(t, os.Getpid(), m.Pid)
	assert.Empty(t, skipped)
	send("X_RELAYED=1") // dropped; the sentinel below is sent to systemd directly
	assert.Empty(t, drain(t, s), "one ping: the second came within a quarter interval")
}
