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
	deafSocket(t)
	done := make(chan error, 1)
	go func() { done <- fillUp() }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, unix.EAGAIN, "a full queue is said, not waited out")
	case <-time.After(10 * time.Second):
		t.Fatal("notify blocked on a socket nobody reads")
	}
}

// deafSocket makes a notify socket that only the test reads and points NOTIFY_SOCKET
// at it.
func deafSocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(testutil.SocketDir(t), "deaf")
	deaf, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { deaf.Close() })
	t.Setenv(EnvSocket, path)
	return deaf
}

// fillUp sends pings without waiting until one fails, and returns that failure (nil if
// a million went).
func fillUp() error {
	for range 1 << 20 {
		if _, err := send(daemon.SdNotifyWatchdog, 0); err != nil {
			return err
		}
	}
	return nil
}

// TestSendWaitsForRoomWithinItsBound: execd's sends (READY=1, the relay's pings) wait a
// bounded time for room in a full queue (a blocking socket with SO_SNDTIMEO; oomd's
// pings a non-blocking one): they go once the reader makes room, and give up with
// EAGAIN when it never does.
func TestSendWaitsForRoomWithinItsBound(t *testing.T) {
	for _, wait := range []time.Duration{0, 1500 * time.Millisecond} {
		fd, err := notifySocket(wait)
		require.NoError(t, err)
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		require.NoError(t, err)
		tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO)
		require.NoError(t, err)
		unix.Close(fd)
		assert.Equal(t, wait == 0, fl&unix.O_NONBLOCK != 0, "non-blocking only without a wait (%v)", wait)
		assert.Equal(t, wait, time.Duration(tv.Nano()), "the send timeout is the wait")
	}

	clearEnv(t)
	deaf := deafSocket(t)
	require.ErrorIs(t, fillUp(), unix.EAGAIN)
	_, err := send(daemon.SdNotifyWatchdog, 50*time.Millisecond)
	require.ErrorIs(t, err, unix.EAGAIN, "nobody reads: given up after the bound")

	done := make(chan error, 1)
	go func() {
		_, err := send(daemon.SdNotifyReady, 30*time.Second)
		done <- err
	}()
	buf := make([]byte, 64)
	_, err = deaf.Read(buf) // room for one
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err, "sent once there was room")
	case <-time.After(10 * time.Second):
		t.Fatal("the send did not go when room was made")
	}
}

// TestWatchdogPingRetriedAtTheNextBeat: a ping that could not go (no socket yet, or a
// full queue) is tried again at the next Beat, not half an interval later; a failing
// streak is logged once.
func TestWatchdogPingRetriedAtTheNextBeat(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(testutil.SocketDir(t), "later")
	t.Setenv(EnvSocket, path)
	t.Setenv(EnvWatchdogUsec, "10000000") // 10 s
	now := time.Unix(1000, 0)
	w := newWatchdog(zaptest.NewLogger(t), func() time.Time { return now })
	require.NotNil(t, w)
	w.Beat() // nothing listens: not sent
	assert.True(t, w.failing)
	now = now.Add(100 * time.Millisecond)
	w.Beat()

	s := sdnotifytest.ListenAt(t, path)
	now = now.Add(100 * time.Millisecond) // a tick later, far from half the interval
	w.Beat()
	assert.Equal(t, []string{"WATCHDOG=1"}, drain(t, s), "retried at the next tick")
	assert.False(t, w.failing)
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
