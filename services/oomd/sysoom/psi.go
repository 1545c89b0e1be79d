package sysoom

import (
	"bytes"
	"fmt"
)

// DefaultPSI is where the kernel reports memory pressure (Linux 4.20+, CONFIG_PSI).
const DefaultPSI = "/proc/pressure/memory"

// PSIReader reads the "full avg10" of a PSI file: the kernel's is kept open and read
// with one pread, any other (a test's) is reopened on every read (procFile).
type PSIReader struct {
	f procFile
}

// NewPSIReader reads path (DefaultPSI when empty).
func NewPSIReader(path string) *PSIReader {
	if path == "" {
		path = DefaultPSI
	}
	return &PSIReader{f: newProcFile(path, 512)}
}

var psiFullKey = []byte("full avg10=")

// ReadFull returns "full avg10" in hundredths of a percent (0..10000): the share of the
// last 10 s in which every non-idle task was stalled waiting for memory.
func (r *PSIReader) ReadFull() (uint32, error) {
	b, err := r.f.read()
	if err != nil {
		return 0, fmt.Errorf("read memory pressure: %w", err)
	}
	return parsePSIFull(b, r.f.path)
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
