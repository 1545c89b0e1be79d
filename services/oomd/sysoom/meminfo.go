package sysoom

import (
	"bytes"
	"fmt"
	"strconv"
)

// DefaultMeminfo is where the kernel publishes MemAvailable.
const DefaultMeminfo = "/proc/meminfo"

// MeminfoReader reads MemAvailable from a meminfo-format file: the kernel's is kept
// open and read with one pread, any other (a test's, replaced between readings) is
// reopened on every read (procFile). A steady read costs no allocation. Not safe for
// concurrent use.
type MeminfoReader struct {
	f procFile
}

// NewMeminfoReader reads path (DefaultMeminfo when empty).
func NewMeminfoReader(path string) *MeminfoReader {
	if path == "" {
		path = DefaultMeminfo
	}
	return &MeminfoReader{f: newProcFile(path, 8<<10)}
}

var memAvailableKey = []byte("MemAvailable:")

// ReadMemAvailable returns MemAvailable in bytes. A file without a complete
// MemAvailable line (torn while a test rewrote it, or a kernel without it) is an error,
// never a zero: a zero would read as out of memory.
func (m *MeminfoReader) ReadMemAvailable() (uint64, error) {
	b, err := m.f.read()
	if err != nil {
		return 0, fmt.Errorf("read MemAvailable: %w", err)
	}
	return parseMemAvailable(b, m.f.path)
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
	// "<spaces><digits> kB": by hand, since bytes.Fields allocated on every tick.
	v := bytes.TrimLeft(line[:end], " \t")
	digits := 0
	for digits < len(v) && v[digits] >= '0' && v[digits] <= '9' {
		digits++
	}
	unit := bytes.TrimLeft(v[digits:], " \t")
	// No digits, or no blank between them and the unit (none at all, or "123kB").
	if digits == 0 || len(unit) == len(v[digits:]) || string(bytes.TrimRight(unit, " \t")) != "kB" {
		return 0, fmt.Errorf("read MemAvailable: malformed line %q in %s", line[:end], path)
	}
	kb, err := strconv.ParseUint(string(v[:digits]), 10, 64)
	if err != nil || kb > (^uint64(0))>>10 {
		return 0, fmt.Errorf("read MemAvailable: malformed value %q in %s", v[:digits], path)
	}
	return kb << 10, nil
}
