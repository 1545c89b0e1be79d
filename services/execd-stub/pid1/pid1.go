//go:build linux

package pid1

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrNotPID1 is returned by PowerOff and Reboot when the caller is not PID 1.
var ErrNotPID1 = errors.New("pid1: not running as PID 1")

// A mount is one file system Setup makes available.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode // of the target directory if Setup creates it
}

const (
	nosuidNodev       = unix.MS_NOSUID | unix.MS_NODEV
	nosuidNodevNoexec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
)

// mounts is in dependency order: /sys/fs/cgroup lives inside sysfs.
var mounts = []mount{
	{"proc", "/proc", "proc", nosuidNodevNoexec, "", 0o555},
	{"sysfs", "/sys", "sysfs", nosuidNodevNoexec, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"tmpfs", "/run", "tmpfs", nosuidNodev, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", nosuidNodev, "mode=1777", 0o777 | os.ModeSticky},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuidNodevNoexec, "nsdelegate", 0o555},
}

// system is what Setup needs from the kernel; tests replace it.
type system struct {
	getpid     func() int
	mkdirAll   func(path string, mode os.FileMode) error
	isMountpt  func(path string) (bool, error)
	mount      func(source, target, fstype string, flags uintptr, data string) error
	sync       func()
	reboot     func(cmd int) error
	rootPrefix string // prepended to every target; "" in production
}

var host = system{
	getpid:    os.Getpid,
	mkdirAll:  os.MkdirAll,
	isMountpt: isMountpoint,
	mount:     unix.Mount,
	sync:      unix.Sync,
	reboot:    unix.Reboot,
}

// IsPID1 reports whether the calling process is PID 1 (init of its PID namespace).
func IsPID1() bool { return host.getpid() == 1 }

// Setup mounts proc on /proc, sysfs on /sys, devtmpfs on /dev, tmpfs on /run and /tmp and
// cgroup2 on /sys/fs/cgroup, creating the directories as needed. A target that is already a
// mount point is left alone, so Setup is idempotent. It does nothing unless the caller is
// PID 1.
func Setup() error { return host.setup() }

func (s system) setup() error {
	if s.getpid() != 1 {
		return nil
	}
	for _, m := range mounts {
		target := s.rootPrefix + m.target
		if err := s.mkdirAll(target, m.mode); err != nil {
			return fmt.Errorf("pid1: create %s: %w", m.target, err)
		}
		mounted, err := s.isMountpt(target)
		if err != nil {
			return fmt.Errorf("pid1: check %s: %w", m.target, err)
		}
		if mounted {
			continue
		}
		if err := s.mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("pid1: mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// isMountpoint reports whether path is the root of a mounted file system: its device differs
// from its parent's, or it is its parent (the root). A bind mount of a directory of the same
// file system is not detected; Setup never makes one.
func isMountpoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Join(path, ".."), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// PowerOff syncs the file systems and powers the machine off. On success it does not return.
func PowerOff() error { return host.end(unix.LINUX_REBOOT_CMD_POWER_OFF) }

// Reboot syncs the file systems and restarts the machine. On success it does not return.
// Under QEMU with -no-reboot the VM exits instead, which is how a test harness sees it.
func Reboot() error { return host.end(unix.LINUX_REBOOT_CMD_RESTART) }

func (s system) end(cmd int) error {
	if s.getpid() != 1 {
		return ErrNotPID1
	}
	s.sync()
	if err := s.reboot(cmd); err != nil {
		return fmt.Errorf("pid1: reboot(%#x): %w", cmd, err)
	}
	return nil
}
