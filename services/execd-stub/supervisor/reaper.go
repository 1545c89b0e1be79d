package supervisor

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// EnableSubreaper makes this process the reaper of its orphaned descendants, so a
// non-PID-1 execd (host tests, `make run`) behaves as it does as PID 1 in the VM.
func EnableSubreaper() error {
	if os.Getpid() == 1 {
		return nil
	}
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// siginfoChld is the SIGCHLD layout of siginfo_t (x/sys/unix.Siginfo hides the union).
type siginfoChld struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	Uid    uint32
	Status int32
	_      [100]byte
}

var _ [unsafe.Sizeof(unix.Siginfo{}) - unsafe.Sizeof(siginfoChld{})]struct{} // same size
var _ [unsafe.Sizeof(siginfoChld{}) - unsafe.Sizeof(unix.Siginfo{})]struct{}

func (s *Supervisor) nudgeReaper() {
	select {
	case s.reapNudge <- struct{}{}:
	default:
	}
}

func (s *Supervisor) reapLoop(ctx context.Context) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	s.reapOrphans()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-s.reapNudge:
		}
		s.reapOrphans()
	}
}

// reapOrphans reaps every zombie child that is not a managed child. When the first
// waitable child is a managed one, it stops: that child's waiter reaps it and nudges
// the reaper again.
func (s *Supervisor) reapOrphans() {
	for {
		s.spawnMu.Lock()
		var info siginfoChld
		err := unix.Waitid(unix.P_ALL, 0, (*unix.Siginfo)(unsafe.Pointer(&info)),
			unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		pid := int(info.Pid)
		if err != nil || pid == 0 || s.managed[pid] {
			s.spawnMu.Unlock()
			if err != nil && !errors.Is(err, unix.ECHILD) && !errors.Is(err, unix.EINTR) {
				s.log.Warn("waitid(P_ALL) failed", zap.Error(err))
			}
			return
		}
		var ws unix.WaitStatus
		_, err = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		s.spawnMu.Unlock()
		if err != nil {
			s.log.Warn("reaping orphan failed", zap.Int("pid", pid), zap.Error(err))
			return
		}
		s.log.Debug("reaped orphan", zap.Int("pid", pid), zap.Int("status", int(ws)))
	}
}
