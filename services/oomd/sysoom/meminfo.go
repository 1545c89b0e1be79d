package sysoom

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// DefaultMeminfo is where the kernel publishes MemAvailable.
const DefaultMeminfo = "/proc/meminfo"

// MeminfoReader reads MemAvailable from a meminfo-format file. It reopens the file on
// every read, so a test can replace the file between reads, and reuses one buffer, so a
// steady read costs no allocation. Not safe for concurrent use.
type MeminfoReader struct {
	path string
	buf  []byte
}

// NewMeminfoReader reads path (DefaultMeminfo when empty).
func NewMeminfoReader(path string) *MeminfoReader {
	if path == "" {
		path = DefaultMeminfo
	}
	return &MeminfoReader{path: path, buf: make([]byte, 8<<10)}
}

var memAvailableKey = []byte("MemAvailable:")

// ReadMemAvailable returns MemAvailable in bytes. A file without a complete
// MemAvailable line (torn while a test rewrote it, or a kernel without it) is an error,
// never a zero: a zero would read as out of memory.
func (m *MeminfoReader) ReadMemAvailable() (uint64, error) {
	f, err := os.Open(m.path)
	if err != nil {
		return 0, fmt.Errorf("read MemAvailable: %w", err)
	}
	n, err := io.ReadFull(f, m.buf)
	f.Close()
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read MemAvailable from %s: %w", m.path, err)
	}
	return parseMemAvailable(m.buf[:n], m.path)
}

func parseMemAvailable(b []byte, path string) (uint64, error) {
	i := bytes.Index(b, memAvailableKey)
	if i < 0 || (i > 0 && b[i-1] != '\n') {
		return 0, fmt.Errorf("read MemAvailable: no MemAvailable line in %s", path)
	}
	line := b[i+len(memAvailableKey):]
	end := bytes.IndexByte(line, '\n')
	if end < 0 {
		return 0, fmt.Errorf("read MemAvailable: the MemAvailable line in %s is incomplete", path)
	}
	f := bytes.Fields(line[:end])
	if len(f) != 2 || string(f[1]) != "kB" {
		return 0, fmt.Errorf("read MemAvailable: malformed line %q in %s", line[:end], path)
	}
	kb, err := strconv.ParseUint(string(f[0]), 10, 64)
	if err != nil || kb > (^uint64(0))>>10 {
		return 0, fmt.Errorf("read MemAvailable: malformed value %q in %s", f[0], path)
	}
	return kb << 10, nil
}
