package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"oomd.dev/oomd/internal/sdnotify/credgram"
)

// RelaySocket is the relay's name in execd's runtime directory.
const RelaySocket = "notify.sock"

// Relay is execd's end of its watchdog service's notify socket, so that the unit can say
// NotifyAccess=main: systemd then takes notify messages from execd alone, and no other
// process of the unit (a subject that found /run/systemd/notify) can feed or trip its
// watchdog, or say READY, STOPPING or MAINPID in execd's name.
//
// It is a unixgram socket in execd's runtime directory (owner-only), handed to the
// watchdog service alone as NOTIFY_SOCKET (Env). A datagram that is exactly
// "WATCHDOG=1", sent by the watchdog service's current process (the pid the kernel
// attaches, SO_PASSCRED: a subject cannot pass for it without CAP_SYS_ADMIN), is sent on
// to systemd by execd, at most once a quarter interval; every other one is dropped, and
// said once in the log. So the pings still come from oomd's tick loop alone: a frozen
// oomd stops them, and systemd restarts the unit.
type Relay struct {
	conn     *net.UnixConn
	path     string
	log      *zap.Logger
	env      []string      // the watchdog service's: this socket, systemd's interval
	every    time.Duration // the least time between two pings sent on
	sender   func() int    // the watchdog service's current pid (0: none)
	lastSent time.Time
	dropped  map[string]bool // what was dropped already (logged once each; bounded)
}

// maxSocketPath is the longest path a Unix socket address holds (sun_path, 108 bytes,
// with its terminating NUL).
const maxSocketPath = 107

// NewRelay binds the relay in dir when systemd asked execd for watchdog pings (as
// WatchdogEnv says); with no watchdog it returns nil and no error. sender says which pid
// may ping (the watchdog service's current process; 0 when it has none); Run calls it
// for each ping.
func NewRelay(dir string, log *zap.Logger, sender func() int) (*Relay, error) {
	env := WatchdogEnv()
	if env == nil {
		return nil, nil
	}
	interval, err := daemon.SdWatchdogEnabled(false) // a positive one, as WatchdogEnv found
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, RelaySocket)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("notify relay %s: %d bytes, a Unix socket path holds at most %d: use a shorter --runtime-dir", path, len(path), maxSocketPath)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	conn, err := credgram.Listen(path)
	if err != nil {
		return nil, err
	}
	env[0] = EnvSocket + "=" + path // WatchdogEnv's first is systemd's socket
	r := &Relay{conn: conn, path: path, log: log, env: env, every: interval / 4, sender: sender, dropped: map[string]bool{}}
	if err := os.Chmod(path, 0o600); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Env is the watchdog service's notify environment: the relay and systemd's interval.
// A nil Relay has none.
func (r *Relay) Env() []string {
	if r == nil {
		return nil
	}
	return r.env
}

// Run relays until Close. A nil Relay returns at once.
func (r *Relay) Run() {
	if r == nil {
		return
	}
	rd := credgram.NewReader(512)
	for {
		b, pid, err := rd.Read(r.conn)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			r.log.Warn("notify relay: read failed", zap.Error(err))
			continue
		}
		msg := string(b)
		if msg != daemon.SdNotifyWatchdog || pid == 0 || pid != r.sender() {
			r.drop(msg, pid)
			continue
		}
		// A quarter interval between pings: oomd sends one every half interval, and a
		// sender that pinged in a loop would only make execd write to systemd in one.
		// Only a ping that went counts: after a failure the next one is passed on.
		if now := time.Now(); r.lastSent.IsZero() || now.Sub(r.lastSent) >= r.every {
			if notify(r.log, daemon.SdNotifyWatchdog, notifyWait) {
				r.lastSent = now
			}
		}
	}
}

// maxDropLog bounds the distinct dropped messages remembered for the once-only log.
const maxDropLog = 16

// drop says once per message (Run's goroutine only) that it was not passed on.
func (r *Relay) drop(msg string, pid int) {
	if r.dropped[msg] || len(r.dropped) >= maxDropLog {
		return
	}
	r.dropped[msg] = true
	if len(msg) > 64 {
		msg = msg[:64]
	}
	r.log.Warn("notify relay: dropped a message (only WATCHDOG=1 from the watchdog service is passed to systemd)",
		zap.String("message", msg), zap.Int("pid", pid))
}

// Close stops the relay and removes its socket. A nil Relay does nothing.
func (r *Relay) Close() {
	if r == nil {
		return
	}
	r.conn.Close()
	os.Remove(r.path)
}
