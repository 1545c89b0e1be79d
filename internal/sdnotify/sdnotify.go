// Package sdnotify speaks systemd's notify protocol (sd_notify(3)) for execd and oomd:
// github.com/coreos/go-systemd/v22/daemon reads the environment, and messages are sent
// with a bounded wait (send): oomd's pings never wait, execd's messages at most a
// second. Without NOTIFY_SOCKET every call is a no-op, so the daemons behave the same
// outside systemd (make run, the VM, tests).
//
// Under systemd (packaging/systemd/oomwatch.service) execd is the unit's main process
// and says READY=1 once its services are up and STOPPING=1 when it begins stopping them.
// The unit's watchdog is fed by oomd, not execd: execd passes NOTIFY_SOCKET (its Relay,
// which sends on nothing but the watchdog process's WATCHDOG=1, as execd) and
// WATCHDOG_USEC to its watchdog service alone and to no other child, and oomd's tick
// loop calls Watchdog.Beat, so an oomd that stops ticking stops the pings and systemd
// restarts the unit. The unit says NotifyAccess=main: systemd hears execd alone.
//
//	// execd
//	relay, err := sdnotify.NewRelay(runtimeDir, log, func() int { return sup.WatchdogPid() })
//	go relay.Run() // nil without a watchdog: returns at once
//	sup := supervisor.New(supervisor.Config{..., WatchdogEnv: relay.Env(),
//		OnReady: func() { sdnotify.Ready(log) }, OnStopping: func() { sdnotify.Stopping(log) }})
//
//	// oomd, in the loop that proves it is alive
//	w := sdnotify.NewWatchdog(log) // nil without a watchdog; Beat on nil does nothing
//	for range ticks { tick(); w.Beat() }
package sdnotify

import (
	"fmt"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The environment systemd gives the unit's main process for the notify protocol.
const (
	EnvSocket       = "NOTIFY_SOCKET"
	EnvWatchdogUsec = "WATCHDOG_USEC"
	EnvWatchdogPID  = "WATCHDOG_PID"
)

// Vars are the variables of the protocol. A child given NOTIFY_SOCKET could tell systemd
// the unit is ready, stopping or alive, so execd passes none of them to a subject.
var Vars = []string{EnvSocket, EnvWatchdogUsec, EnvWatchdogPID}

// Ready tells systemd that start-up finished (READY=1).
func Ready(log *zap.Logger) { notify(log, daemon.SdNotifyReady, notifyWait) }

// Stopping tells systemd that the service is stopping (STOPPING=1).
func Stopping(log *zap.Logger) { notify(log, daemon.SdNotifyStopping, notifyWait) }

// notifyWait bounds how long execd waits for room in systemd's queue (it is shared by
// every unit and can be full for a moment, during a daemon-reload say). oomd's owner
// loop never waits (Watchdog.Beat).
const notifyWait = time.Second

// notify sends state and says whether it went (false also without NOTIFY_SOCKET); a
// failure is logged.
func notify(log *zap.Logger, state string, wait time.Duration) bool {
	sent, err := send(state, wait)
	switch {
	case err != nil:
		log.Warn("sd_notify failed", zap.String("state", state), zap.Error(err))
	case sent:
		log.Debug("sd_notify", zap.String("state", state))
	}
	return sent
}

// send writes state to NOTIFY_SOCKET as one datagram, waiting at most wait for room
// (0: not at all). go-systemd's SdNotify writes on a blocking connection with no
// deadline, so a systemd that stopped reading its socket would block the caller for
// ever; oomd pings from its owner loop, which must never wait for another process.
// Here a queue that stays full is EAGAIN: the message is not sent, and a watchdog not
// fed is what systemd acts on. A name starting with '@' is an abstract socket
// (golang.org/x/sys/unix maps it). sent is false when there is no NOTIFY_SOCKET.
func send(state string, wait time.Duration) (sent bool, err error) {
	sock := os.Getenv(EnvSocket)
	if sock == "" {
		return false, nil
	}
	fd, err := notifySocket(wait)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, []byte(state), unix.MSG_NOSIGNAL, &unix.SockaddrUnix{Name: sock}); err != nil {
		return false, fmt.Errorf("send to %s: %w", sock, err)
	}
	return true, nil
}

// notifySocket is an unbound datagram socket whose sends wait at most wait for room:
// non-blocking for 0, else blocking with SO_SNDTIMEO.
func notifySocket(wait time.Duration) (int, error) {
	flags := unix.SOCK_DGRAM | unix.SOCK_CLOEXEC
	if wait <= 0 {
		flags |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(unix.AF_UNIX, flags, 0)
	if err != nil {
		return -1, fmt.Errorf("notify socket: %w", err)
	}
	if wait > 0 {
		tv := unix.NsecToTimeval(wait.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("notify socket: send timeout: %w", err)
		}
	}
	return fd, nil
}

// WatchdogEnv is systemd's watchdog environment for this process: NOTIFY_SOCKET and
// WATCHDOG_USEC when systemd asked it (WATCHDOG_PID is ours or unset) for pings, nothing
// otherwise. NewRelay starts from it, and hands the watchdog service the same with its
// own socket as NOTIFY_SOCKET (Relay.Env). WATCHDOG_PID is left out: it names execd, and
// oomd would rightly ignore a watchdog meant for another pid.
func WatchdogEnv() []string {
	sock := os.Getenv(EnvSocket)
	if sock == "" {
		return nil
	}
	if d, err := daemon.SdWatchdogEnabled(false); err != nil || d <= 0 {
		return nil
	}
	return []string{EnvSocket + "=" + sock, EnvWatchdogUsec + "=" + os.Getenv(EnvWatchdogUsec)}
}

// Watchdog sends WATCHDOG=1 at most every half interval, from whichever loop calls
// Beat. A nil *Watchdog (no watchdog configured) does nothing.
type Watchdog struct {
	interval time.Duration
	now      func() time.Time
	log      *zap.Logger
	last     time.Time // when the last ping was sent
	beat     time.Time // the previous Beat
	warned   bool
	failing  bool // the last ping was not sent
}

// NewWatchdog returns a Watchdog when systemd asked this process for pings
// (NOTIFY_SOCKET and WATCHDOG_USEC set, WATCHDOG_PID ours or unset), else nil.
func NewWatchdog(log *zap.Logger) *Watchdog {
	return newWatchdog(log, time.Now)
}

func newWatchdog(log *zap.Logger, now func() time.Time) *Watchdog {
	if os.Getenv(EnvSocket) == "" {
		return nil
	}
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog not fed: bad "+EnvWatchdogUsec, zap.Error(err))
		return nil
	}
	if d <= 0 {
		return nil
	}
	log.Info("feeding the systemd watchdog from the tick loop", zap.Duration("interval", d), zap.Duration("every", d/2))
	return &Watchdog{interval: d, now: now, log: log}
}

// Interval is the watchdog interval systemd set (WatchdogSec); 0 for a nil Watchdog.
func (w *Watchdog) Interval() time.Duration {
	if w == nil {
		return 0
	}
	return w.interval
}

// Beat records that the caller's loop made progress and pings systemd when half the
// interval has passed since the last ping. Call it from one goroutine.
func (w *Watchdog) Beat() {
	if w == nil {
		return
	}
	now := w.now()
	if !w.beat.IsZero() && now.Sub(w.beat) > w.interval/2 && !w.warned {
		// The loop itself is slower than the pings must be (a sampleMs near WatchdogSec):
		// systemd will restart a healthy unit. Say so once.
		w.warned = true
		w.log.Warn("the tick loop runs less often than every half watchdog interval; raise WatchdogSec above twice sampleMs",
			zap.Duration("gap", now.Sub(w.beat)), zap.Duration("watchdogInterval", w.interval))
	}
	w.beat = now
	if !w.last.IsZero() && now.Sub(w.last) < w.interval/2 {
		return
	}
	// Never waits: this is oomd's owner loop. A ping that did not go is tried again at
	// the next Beat (the next tick), so a moment of full queue costs a tick, not half an
	// interval; a failing streak is said once.
	if _, err := send(daemon.SdNotifyWatchdog, 0); err != nil {
		if !w.failing {
			w.log.Warn("watchdog ping not sent; trying again at every tick", zap.Error(err))
		}
		w.failing = true
		return
	}
	if w.failing {
		w.log.Info("watchdog ping sent again")
	}
	w.failing = false
	w.last = now
}
