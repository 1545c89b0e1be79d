package sysoom

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseMemAvailable(t *testing.T) {
	good := "MemTotal:       16384000 kB\nMemFree:          100 kB\nMemAvailable:    2048 kB\nBuffers: 1 kB\n"
	n, err := parseMemAvailable([]byte(good), "x")
	require.NoError(t, err)
	assert.Equal(t, uint64(2048<<10), n)
	n, err = parseMemAvailable([]byte("MemAvailable: 0 kB\n"), "x")
	require.NoError(t, err)
	assert.Zero(t, n)
	n, err = parseMemAvailable([]byte("MemAvailable:\t7 kB \n"), "x")
	require.NoError(t, err)
	assert.Equal(t, uint64(7<<10), n, "tabs and trailing blanks")
	goodBytes := []byte(good)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := parseMemAvailable(goodBytes, "x"); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs, "a reading runs on every tick with levels on")
	for name, text := range map[string]string{
		"empty":      "",
		"missing":    "MemTotal: 1 kB\n",
		"torn":       "MemTotal: 1 kB\nMemAvailable:    20",
		"no unit":    "MemAvailable: 20\n",
		"not number": "MemAvailable: x kB\n",
		"overflow":   "MemAvailable: 99999999999999999999 kB\n",
		"mid-line":   "XMemAvailable: 5 kB\n",
		"no space":   "MemAvailable: 5kB\n",
		"other unit": "MemAvailable: 5 MB\n",
		"two units":  "MemAvailable: 5 kB kB\n",
		"negative":   "MemAvailable: -5 kB\n",
		"no value":   "MemAvailable: kB\n",
	} {
		_, err := parseMemAvailable([]byte(text), "x")
		assert.Error(t, err, name)
	}
}

func TestMeminfoReaderRereads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meminfo")
	m := NewMeminfoReader(path)
	_, err := m.ReadMemAvailable()
	assert.Error(t, err, "missing file")
	require.NoError(t, os.WriteFile(path, []byte("MemAvailable: 10 kB\n"), 0o600))
	n, err := m.ReadMemAvailable()
	require.NoError(t, err)
	assert.Equal(t, uint64(10<<10), n)
	require.NoError(t, os.WriteFile(path, []byte("MemAvailable: 5 kB\n"), 0o600))
	n, err = m.ReadMemAvailable()
	require.NoError(t, err)
	assert.Equal(t, uint64(5<<10), n)
}

func TestProcMeminfo(t *testing.T) {
	n, err := NewMeminfoReader("").ReadMemAvailable()
	require.NoError(t, err)
	assert.NotZero(t, n)
}
