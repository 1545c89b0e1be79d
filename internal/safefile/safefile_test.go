package safefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestOpenFileRefusesSymlinksAndNonRegular(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	require.NoError(t, os.WriteFile(target, []byte("precious"), 0o600))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(target, link))

	_, err := OpenFile(link, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	require.ErrorIs(t, err, ErrSymlink)
	assert.Contains(t, err.Error(), link, "the error names the path")
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, "precious", string(b), "the symlink's target is untouched")

	_, err = OpenFile(dir, os.O_RDONLY, 0)
	assert.ErrorIs(t, err, ErrNotRegular, "a directory is not a regular file")
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	_, err = OpenFile(fifo, os.O_RDONLY, 0) // O_NONBLOCK inside: the open does not wait for a writer
	assert.ErrorIs(t, err, ErrNotRegular)

	f, err := OpenFile(target, os.O_RDONLY, 0)
	require.NoError(t, err)
	f.Close()
	_, err = ReadFile(link)
	assert.ErrorIs(t, err, ErrSymlink)
}

func TestDir(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "a", "journal")
	d, err := OpenDir(path, true)
	require.NoError(t, err)
	defer d.Close()

	require.NoError(t, os.Symlink(filepath.Join(root, "elsewhere"), filepath.Join(path, "x.seg")))
	_, err = d.OpenFile("x.seg", os.O_RDWR|os.O_CREATE, 0o600)
	require.ErrorIs(t, err, ErrSymlink)
	_, err = os.Stat(filepath.Join(root, "elsewhere"))
	assert.True(t, os.IsNotExist(err), "nothing was created through the symlink")
	_, err = d.OpenFile("../escape", os.O_RDWR|os.O_CREATE, 0o600)
	assert.Error(t, err)

	require.NoError(t, d.WriteAtomic("hwm", []byte("one"), OS))
	require.NoError(t, d.WriteAtomic("hwm", []byte("two"), OS))
	b, err := os.ReadFile(filepath.Join(path, "hwm"))
	require.NoError(t, err)
	assert.Equal(t, "two", string(b))

	src := strings.NewReader("0123456789")
	q, err := d.Quarantine("seg", src, []Range{{2, 4}, {7, 9}}, OS)
	require.NoError(t, err)
	assert.Equal(t, "seg.quarantine.1", q)
	q2, err := d.Quarantine("seg", src, []Range{{0, 1}}, OS)
	require.NoError(t, err)
	assert.Equal(t, "seg.quarantine.2", q2, "an earlier quarantine file is never overwritten")
	b, err = os.ReadFile(filepath.Join(path, q))
	require.NoError(t, err)
	assert.Equal(t, "2378", string(b))

	link := filepath.Join(root, "linkdir")
	require.NoError(t, os.Symlink(path, link))
	_, err = OpenDir(link, true)
	assert.ErrorIs(t, err, ErrSymlink)
	file := filepath.Join(root, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err = OpenDir(file, false)
	assert.ErrorIs(t, err, ErrNotDir)
}
