package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
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
// "WATCHDOG=1", from a sender of execd's own uid, is sent on to systemd by execd; every
// other one is dropped, and said once in the log. The pings still come from oomd's tick
// loop: a frozen oomd stops them, and systemd restarts the unit.
type Relay struct {
	conn *net.UnixConn
	path string
	log  *zap.Logger
	usec string

	mu      sync.Mutex
	dropped map[string]bool // what was dropped already (logged once each; bounded)
}

// NewRelay binds the relay in dir when systemd asked execd for watchdog pings (as
// WatchdogEnv says); with no watchdog it returns nil and no error.
func NewRelay(dir string, log *zap.Logger) (*Relay, error) {
	env := WatchdogEnv()
	if env == nil {
		return nil, nil
	}
	path := filepath.Join(dir, RelaySocket)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	r := &Relay{conn: conn, path: path, log: log, usec: os.Getenv(EnvWatchdogUsec), dropped: map[string]bool{}}
	err = os.Chmod(path, 0o600)
	if err == nil {
		err = r.passCred()
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Relay) passCred() error {
	raw, err := r.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err != nil {
		return err
	}
	return serr
}

// Env is the watchdog service's notify environment: the relay and systemd's interval.
// A nil Relay has none.
func (r *Relay) Env() []string {
	if r == nil {
		return nil
	}
	return []string{EnvSocket + "=" + r.path, EnvWatchdogUsec + "=" + r.usec}
}

// Run relays until Close. A nil Relay returns at once.
func (r *Relay) Run() {
	if r == nil {
		return
	}
	buf, oob := make([]byte, 512), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := r.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return // closed
		}
		uid := -1
		if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, cm := range cmsgs {
				if cred, err := unix.ParseUnixCredentials(&cm); err == nil {
					uid = int(cred.Uid)
				}
			}
		}
		msg := string(buf[:n])
		if msg != daemon.SdNotifyWatchdog || uid != os.Geteuid() {
			r.drop(msg, uid)
			continue
		}
		notify(r.log, daemon.SdNotifyWatchdog)
	}
}

// maxDropLog bounds the distinct dropped messages remembered for the once-only log.
const maxDropLog = 16

func (r *Relay) drop(msg string, uid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dropped[msg] || len(r.dropped) >= maxDropLog {
		return
	}
	r.dropped[msg] = true
	if len(msg) > 64 {
		msg = msg[:64]
	}
	r.log.Warn("notify relay: dropped a message (only WATCHDOG=1 from execd's uid is passed to systemd)",
		zap.String("message", msg), zap.Int("uid", uid))
}

// Close stops the relay and removes its socket. A nil Relay does nothing.
func (r *Relay) Close() {
	if r == nil {
		return
	}
	r.conn.Close()
	os.Remove(r.path)
}
