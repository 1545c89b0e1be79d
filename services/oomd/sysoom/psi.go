package sysoom

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// DefaultPSI is where the kernel reports memory pressure (Linux 4.20+, CONFIG_PSI).
const DefaultPSI = "/proc/pressure/memory"

// PSIReader reads the "full avg10" of a PSI file, re-opening it on each read (a test
// may replace the file between reads).
type PSIReader struct {
	path string
	buf  []byte
}

// NewPSIReader reads path (DefaultPSI when empty).
func NewPSIReader(path string) *PSIReader {
	if path == "" {
		path = DefaultPSI
	}
	return &PSIReader{path: path, buf: make([]byte, 512)}
}

var psiFullKey = []byte("full avg10=")

// ReadFull returns "full avg10" in hundredths of a percent (0..10000): the share of the
// last 10 s in which every non-idle task was stalled waiting for memory.
func (r *PSIReader) ReadFull() (uint32, error) {
	f, err := os.Open(r.path)
	if err != nil {
		return 0, fmt.Errorf("read memory pressure: %w", err)
	}
	n, err := io.ReadFull(f, r.buf)
	f.Close()
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read memory pressure from %s: %w", r.path, err)
	}
	return parsePSIFull(r.buf[:n], r.path)
}

// parsePSIFull reads the avg10 of the "full" line: "full avg10=12.34 avg60=... total=...".
func parsePSIFull(b []byte, path string) (uint32, error) {
	i := bytes.Index(b, psiFullKey)
	if i < 0 || (i > 0 && b[i-1] != '\n') {
		return 0, fmt.Errorf("read memory pressure: no %q line in %s", "full avg10", path)
	}
	v := b[i+len(psiFullKey):]
	end := bytes.IndexAny(v, " \n")
	if end < 0 {
		return 0, fmt.Errorf("read memory pressure: the full line in %s is incomplete", path)
	}
	v = v[:end]
	whole, frac, ok := bytes.Cut(v, []byte("."))
	if !ok || len(whole) == 0 || len(whole) > 3 || len(frac) != 2 {
		return 0, fmt.Errorf("read memory pressure: malformed full avg10 %q in %s", v, path)
	}
	var n uint32
	for _, c := range append(append([]byte{}, whole...), frac...) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("read memory pressure: malformed full avg10 %q in %s", v, path)
		}
		n = n*10 + uint32(c-'0')
	}
	if n > 10000 {
		return 0, fmt.Errorf("read memory pressure: full avg10 %q above 100 in %s", v, path)
	}
	return n, nil
}
