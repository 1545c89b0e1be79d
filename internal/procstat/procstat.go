// Package procstat reads /proc/PID/stat (proc(5)). Its second field, the command name
// in parentheses, may itself hold spaces and parentheses (a process can name itself
// anything), so the fields after it are counted from the last ')'. Every reader of that
// file in this repository goes through here, so none gets that wrong on its own.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// Stat is one reading of /proc/PID/stat: the fields from 3 (state) on.
type Stat struct {
	fields [][]byte
}

// firstField is the number (proc(5)) of the first field after the command name.
const firstField = FieldState

// Parse splits the content of a /proc/PID/stat file.
func Parse(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, errors.New("procstat: no ')' after the command name")
	}
	f := bytes.Fields(b[i+1:])
	if len(f) == 0 {
		return Stat{}, errors.New("procstat: no fields after the command name")
	}
	return Stat{fields: f}, nil
}

// Read reads and parses /proc/<pid>/stat.
func Read(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return Parse(b)
}

// Field is field n as proc(5) numbers them (3 is the state, 4 the parent's pid, 22 the
// start time), or nil when the line has no such field.
func (s Stat) Field(n int) []byte {
	if i := n - firstField; i >= 0 && i < len(s.fields) {
		return s.fields[i]
	}
	return nil
}

// Uint is field n as a decimal number.
func (s Stat) Uint(n int) (uint64, error) {
	f := s.Field(n)
	if f == nil {
		return 0, fmt.Errorf("procstat: no field %d", n)
	}
	v, err := strconv.ParseUint(string(f), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("procstat: field %d: %w", n, err)
	}
	return v, nil
}

// Gone reports a process that has exited: a zombie (Z) or dead (X) not yet reaped.
func (s Stat) Gone() bool {
	st := s.Field(FieldState)
	return len(st) > 0 && (st[0] == 'Z' || st[0] == 'X')
}

// The fields the repository reads (proc(5)).
const (
	FieldState     = 3
	FieldPPID      = 4
	FieldPGRP      = 5
	FieldUTime     = 14 // clock ticks (USER_HZ)
	FieldSTime     = 15
	FieldStartTime = 22 // clock ticks after boot
)
