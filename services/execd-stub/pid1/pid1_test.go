//go:build linux

package pid1

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// fakeKernel records what Setup and end ask of the kernel; directories are real, under a
// temporary root, and a mount marks its target as a mount point.
type fakeKernel struct {
	pid     int
	mounted map[string]bool
	calls   []string
}

func (k *fakeKernel) system(root string) system {
	return system{
		getpid:   func() int { return k.pid },
		mkdirAll: os.MkdirAll,
		isMountpt: func(path string) (bool, error) {
			if _, err := os.Stat(path); err != nil {
				return false, err
			}
			return k.mounted[path], nil
		},
		mount: func(source, target, fstype string, flags uintptr, data string) error {
			k.calls = append(k.calls, "mount "+fstype+" "+target[len(root):])
			k.mounted[target] = true
			return nil
		},
		sync: func() { k.calls = append(k.calls, "sync") },
		reboot: func(cmd int) error {
			switch cmd {
			case unix.LINUX_REBOOT_CMD_POWER_OFF:
				k.calls = append(k.calls, "poweroff")
			case unix.LINUX_REBOOT_CMD_RESTART:
				k.calls = append(k.calls, "restart")
			default:
				k.calls = append(k.calls, "reboot ?")
			}
			return nil
		},
		rootPrefix: root,
	}
}

func TestSetupMountsInOrderOnceAsPID1(t *testing.T) {
	root := t.TempDir()
	k := &fakeKernel{pid: 1, mounted: map[string]bool{}}
	s := k.system(root)

	require.NoError(t, s.setup())
	assert.Equal(t, []string{
		"mount proc /proc",
		"mount sysfs /sys",
		"mount devtmpfs /dev",
		"mount tmpfs /run",
		"mount tmpfs /tmp",
		"mount cgroup2 /sys/fs/cgroup",
	}, k.calls)
	for _, m := range mounts {
		assert.DirExists(t, filepath.Join(root, m.target), m.target)
	}

	k.calls = nil
	require.NoError(t, s.setup(), "second Setup")
	assert.Empty(t, k.calls, "second Setup must not mount again")
}

func TestSetupMountsOnlyWhatIsMissing(t *testing.T) {
	root := t.TempDir()
	k := &fakeKernel{pid: 1, mounted: map[string]bool{}}
	s := k.system(root)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "proc"), 0o755))
	k.mounted[filepath.Join(root, "proc")] = true // e.g. mounted by an earlier init

	require.NoError(t, s.setup())
	assert.NotContains(t, k.calls, "mount proc /proc")
	assert.Contains(t, k.calls, "mount cgroup2 /sys/fs/cgroup")
}

func TestSetupIsNoOpUnlessPID1(t *testing.T) {
	root := t.TempDir()
	k := &fakeKernel{pid: 4242, mounted: map[string]bool{}}

	require.NoError(t, k.system(root).setup())
	assert.Empty(t, k.calls)
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	assert.Empty(t, entries, "no directories created when not PID 1")
}

func TestEndSyncsThenReboots(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  int
		want string
	}{
		{"poweroff", unix.LINUX_REBOOT_CMD_POWER_OFF, "poweroff"},
		{"restart", unix.LINUX_REBOOT_CMD_RESTART, "restart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &fakeKernel{pid: 1, mounted: map[string]bool{}}
			require.NoError(t, k.system(t.TempDir()).end(tc.cmd))
			assert.Equal(t, []string{"sync", tc.want}, k.calls)
		})
	}
}

func TestEndRefusesUnlessPID1(t *testing.T) {
	k := &fakeKernel{pid: 7, mounted: map[string]bool{}}
	err := k.system(t.TempDir()).end(unix.LINUX_REBOOT_CMD_POWER_OFF)
	assert.ErrorIs(t, err, ErrNotPID1)
	assert.Empty(t, k.calls, "must neither sync nor reboot")
}

// The real entry points, on the host where the test is never PID 1.
func TestHostEntryPoints(t *testing.T) {
	if IsPID1() {
		t.Skip("running as PID 1: the real entry points would act on this machine")
	}
	assert.NoError(t, Setup())
	assert.ErrorIs(t, PowerOff(), ErrNotPID1)
	assert.ErrorIs(t, Reboot(), ErrNotPID1)
}

func TestIsMountpoint(t *testing.T) {
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"/", true},
		{"/proc", true},
		{t.TempDir(), false},
	} {
		got, err := isMountpoint(tc.path)
		require.NoError(t, err, tc.path)
		assert.Equal(t, tc.want, got, tc.path)
	}
	_, err := isMountpoint(filepath.Join(t.TempDir(), "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}
