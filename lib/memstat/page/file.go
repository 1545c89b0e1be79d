package page

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// EnvFD names the environment variable through which execd tells a subject which
// inherited fd is its read-write page.
const EnvFD = "OOMD_MEMSTAT_PAGE_FD"

// RequiredSeals are the seals every page carries: its size can never change (a shrink
// would make oomd's mapping fault with SIGBUS), and no seal can be added or removed.
const RequiredSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// ErrInvalidPage is wrapped by every refusal of Verify, NewReader and NewWriter that
// concerns the file itself (type, size, seals, magic); the message says what is wrong.
var ErrInvalidPage = errors.New("not a valid memstat page")

// Create makes a new page: a memfd of PageSize bytes named name (visible in
// /proc/PID/fd as "memfd:name"), with magic and version written and RequiredSeals set.
// The returned file is read-write and close-on-exec; pass it to the subject (e.g. in
// exec.Cmd.ExtraFiles) and a ReadOnly reopening of it to oomd.
func Create(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memstat page: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if err := initialise(fd); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func initialise(fd int) error {
	if err := unix.Ftruncate(fd, PageSize); err != nil {
		return fmt.Errorf("memstat page: ftruncate: %w", err)
	}
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[OffMagic:], Magic)
	binary.LittleEndian.PutUint32(hdr[OffVersion:], Version)
	if n, err := unix.Pwrite(fd, hdr[:], 0); err != nil || n != len(hdr) {
		return fmt.Errorf("memstat page: write header: %d bytes, %w", n, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, RequiredSeals); err != nil {
		return fmt.Errorf("memstat page: add seals: %w", err)
	}
	return nil
}

// ReadOnly returns a new, read-only open file description of the page rw (through
// /proc/self/fd), so the fd given to oomd cannot be mapped writable or written to. The
// result is close-on-exec.
func ReadOnly(rw *os.File) (*os.File, error) {
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(int(rw.Fd())), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("memstat page: reopen read-only: %w", err)
	}
	return os.NewFile(uintptr(fd), rw.Name()+" (read-only)"), nil
}

// Verify checks that f is a page oomd can map safely: a regular file of exactly PageSize
// bytes that carries RequiredSeals (which only a memfd created with sealing allowed can).
// It makes a few syscalls: call it once, at handoff. It does not look at the contents.
func Verify(f *os.File) error {
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("memstat page: fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: not a regular file (mode %#o)", ErrInvalidPage, st.Mode)
	}
	if st.Size != PageSize {
		return fmt.Errorf("%w: size %d, want %d", ErrInvalidPage, st.Size, PageSize)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("%w: cannot read seals (not a memfd?): %v", ErrInvalidPage, err)
	}
	if missing := RequiredSeals &^ seals; missing != 0 {
		return fmt.Errorf("%w: seals %s missing (has %s)", ErrInvalidPage, sealNames(missing), sealNames(seals))
	}
	return nil
}

func sealNames(s int) string {
	names := []struct {
		bit  int
		name string
	}{
		{unix.F_SEAL_SEAL, "SEAL"}, {unix.F_SEAL_SHRINK, "SHRINK"}, {unix.F_SEAL_GROW, "GROW"},
		{unix.F_SEAL_WRITE, "WRITE"}, {unix.F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"},
	}
	out := ""
	for _, n := range names {
		if s&n.bit != 0 {
			if out != "" {
				out += "|"
			}
			out += n.name
			s &^= n.bit
		}
	}
	if s != 0 {
		if out != "" {
			out += "|"
		}
		out += fmt.Sprintf("%#x", s)
	}
	if out == "" {
		return "none"
	}
	return out
}

// FromEnv opens the page named by EnvFD as a Writer, marks the inherited fd
// close-on-exec and closes it (the mapping stays). ok is false when EnvFD is not set.
func FromEnv() (w *Writer, ok bool, err error) {
	s, set := os.LookupEnv(EnvFD)
	if !set || s == "" {
		return nil, false, nil
	}
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		return nil, true, fmt.Errorf("%s=%q is not an inherited fd number (>= 3)", EnvFD, s)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), EnvFD)
	defer f.Close()
	w, err = NewWriter(f)
	if err != nil {
		return nil, true, fmt.Errorf("page from %s=%d: %w", EnvFD, fd, err)
	}
	return w, true, nil
}

// mapPage maps the first PageSize bytes of f with prot (MAP_SHARED) after checking the
// file is large enough, so no access to the mapping can fault.
func mapPage(f *os.File, prot int) ([]byte, error) {
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("memstat page: fstat: %w", err)
	}
	if st.Size != PageSize {
		return nil, fmt.Errorf("%w: size %d, want %d", ErrInvalidPage, st.Size, PageSize)
	}
	mem, err := unix.Mmap(fd, 0, PageSize, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("memstat page: mmap: %w", err)
	}
	return mem, nil
}
