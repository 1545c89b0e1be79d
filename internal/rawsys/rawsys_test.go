package rawsys

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestPread(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(path, []byte("0123456789"), 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, 4)
	n, err := Pread(int(f.Fd()), buf, 3)
	require.NoError(t, err)
	assert.Equal(t, "3456", string(buf[:n]))
	n, err = Pread(int(f.Fd()), buf, 8)
	require.NoError(t, err)
	assert.Equal(t, "89", string(buf[:n]), "a short read at the end")
	n, err = Pread(int(f.Fd()), buf, 10)
	require.NoError(t, err)
	assert.Zero(t, n, "end of file")
	_, err = Pread(-1, buf, 0)
	assert.ErrorIs(t, err, unix.EBADF)
}

func TestRead(t *testing.T) {
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, 8)
	_, err := Read(p[0], buf)
	assert.ErrorIs(t, err, unix.EAGAIN, "nothing to read: the caller waits")
	_, err = unix.Write(p[1], []byte("tick"))
	require.NoError(t, err)
	n, err := Read(p[0], buf)
	require.NoError(t, err)
	assert.Equal(t, "tick", string(buf[:n]))
}
