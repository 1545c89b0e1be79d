package sysoom

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProcFileKeptReadsAnew: a kept /proc file is generated anew by every pread. The
// process's own read count (/proc/self/io rchar) grows by at least the bytes of the
// previous reading, so a stale buffer or a read at the old offset would show.
func TestProcFileKeptReadsAnew(t *testing.T) {
	p := newProcFile("/proc/self/io", 1024)
	require.True(t, p.keep)
	rchar := func() uint64 {
		b, err := p.read()
		require.NoError(t, err)
		_, v, ok := bytes.Cut(b, []byte("rchar: "))
		require.True(t, ok, "%q", b)
		v, _, _ = bytes.Cut(v, []byte("\n"))
		n, err := strconv.ParseUint(string(v), 10, 64)
		require.NoError(t, err)
		return n
	}
	first := rchar()
	require.NotNil(t, p.f, "kept open after the first reading")
	f := p.f
	second := rchar()
	assert.Same(t, f, p.f, "the same file, not reopened")
	assert.GreaterOrEqual(t, second, first+uint64(len("rchar: ")), "the second reading counts the first")
}

// TestProcFileOtherReopened: a file outside /proc is reopened by every reading, so a
// file replaced by rename is seen.
func TestProcFileOtherReopened(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "meminfo")
	p := newProcFile(path, 64)
	require.False(t, p.keep)
	for _, v := range []string{"one", "two"} {
		tmp := filepath.Join(dir, "tmp")
		require.NoError(t, os.WriteFile(tmp, []byte(v), 0o600))
		require.NoError(t, os.Rename(tmp, path))
		b, err := p.read()
		require.NoError(t, err)
		assert.Equal(t, v, string(b))
		assert.Nil(t, p.f)
	}
}
