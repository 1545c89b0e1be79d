package sysoom

import (
	"fmt"
	"os"
	"strings"

	"oomd.dev/oomd/internal/rawsys"
)

// procFile reads a small file whole into a reused buffer. A file under /proc is opened
// once and read with one pread at offset 0, which makes the kernel generate it anew: one
// syscall per reading (open, fstat, two reads and a close otherwise). Any other file (a
// test's, replaced by rename between readings) is opened for every reading. Not safe for
// concurrent use.
type procFile struct {
	path string
	keep bool     // path is under /proc: f stays open
	f    *os.File // the kept file (nil until the first reading, or after a failed one)
	fd   int      // f's descriptor, taken once: os.File.Fd may make an fcntl call each time
	buf  []byte
}

func newProcFile(path string, size int) procFile {
	return procFile{path: path, keep: strings.HasPrefix(path, "/proc/"), buf: make([]byte, size)}
}

// read returns the file's content (at most len(buf) bytes), valid until the next read.
func (p *procFile) read() ([]byte, error) {
	fd := p.fd
	if p.f == nil {
		f, err := os.Open(p.path)
		if err != nil {
			return nil, err
		}
		fd = int(f.Fd())
		if p.keep {
			p.f, p.fd = f, fd
		} else {
			defer f.Close()
		}
	}
	n, err := pread1(fd, p.buf)
	if err != nil {
		if p.f != nil { // reopened at the next reading
			p.f.Close()
			p.f = nil
		}
		return nil, fmt.Errorf("%s: %w", p.path, err)
	}
	return p.buf[:n], nil
}

// pread1 is one pread at offset 0: the kernel hands a /proc file over whole in one read
// (seq_file), and a short read of a regular file is its end. At most len(buf) bytes
// are read; a longer file is cut there, like the readers' fixed buffers always did.
// The call is raw (internal/rawsys): these files never block.
func pread1(fd int, buf []byte) (int, error) {
	return rawsys.Pread(fd, buf, 0)
}
