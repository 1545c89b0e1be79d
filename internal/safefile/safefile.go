// Package safefile opens oomd's durable files without following symbolic links and
// without accepting a device, FIFO or directory where a regular file is expected, and
// puts every fsync behind a Syncer so a test can count (or fail) them.
//
// A path flag (--spill, --policy, --reboot-record, logd's --dir) names the file itself:
// its last component is opened with O_NOFOLLOW and checked with fstat after the open (so
// a swap between a check and the open cannot slip through). Files inside a directory
// the daemon owns (the journal's segments) are opened with openat on a directory fd
// that was itself opened with O_NOFOLLOW, so a symlink planted in the directory is
// refused too. Parent directories of a flag's path are followed as usual (/var/run is
// a symlink on many systems).
//
//	d, err := safefile.OpenDir("/var/log/journal", true)
//	f, err := d.OpenFile("00000000000000000001.seg", os.O_RDWR, 0)
//	err = d.Sync(safefile.OS)
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Errors naming why a path was refused.
var (
	ErrSymlink    = errors.New("is a symbolic link; refusing to follow it (name the real file)")
	ErrNotRegular = errors.New("is not a regular file")
	ErrNotDir     = errors.New("is not a directory")
)

// Syncer is the one place oomd's durable files are fsync'ed. Production code uses OS;
// tests substitute a counting or failing implementation, so that removing an fsync
// from a write path fails a test (reading back through the page cache cannot tell).
type Syncer interface {
	Sync(f *os.File) error
}

// OS fsyncs for real.
var OS Syncer = osSyncer{}

type osSyncer struct{}

func (osSyncer) Sync(f *os.File) error { return f.Sync() }

// pathError turns the errno of a refused open into one of the sentinels, naming path.
func pathError(op, path string, err error) error {
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%s %s: %w", op, path, ErrSymlink)
	}
	if errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("%s %s (a directory) %w", op, path, ErrNotRegular)
	}
	if errors.Is(err, unix.ENOTDIR) {
		// O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP.
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s %s: %w", op, path, ErrSymlink)
		}
		return fmt.Errorf("%s %s: %w", op, path, ErrNotDir)
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}

// OpenFile opens path (flag as for os.OpenFile) without following a symlink in its last
// component and fails unless it is a regular file.
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, uint32(perm.Perm()))
	if err != nil {
		return nil, pathError("open", path, err)
	}
	return regular(fd, path)
}

// regular wraps fd (opened with O_NONBLOCK, so a FIFO cannot block the open) as a file
// if it is a regular file, in blocking mode again.
func regular(fd int, path string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s (mode %#o) %w", path, st.Mode&unix.S_IFMT, ErrNotRegular)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// OpenNode opens path without following a symlink in its last component and returns
// it with its file mode, for callers that accept more than regular files (a block
// device) and check the type themselves.
func OpenNode(path string, flag int, perm os.FileMode) (*os.File, os.FileMode, error) {
	fd, err := unix.Open(path, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, 0, pathError("open", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return f, fi.Mode(), nil
}

// ReadFile reads a regular file without following a symlink in its last component.
func ReadFile(path string) ([]byte, error) {
	f, err := OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Dir is an open directory; files in it are opened relative to its fd.
type Dir struct {
	f    *os.File
	path string
}

// OpenDir opens the directory at path, creating it (0700) when create is set and it
// does not exist. A symlink at path is refused, as is anything but a directory.
func OpenDir(path string, create bool) (*Dir, error) {
	if create {
		if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return nil, fmt.Errorf("create dir %s: %w", filepath.Dir(path), err)
			}
			if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("create dir %s: %w", path, err)
			}
		}
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, pathError("open dir", path, err)
	}
	return &Dir{f: os.NewFile(uintptr(fd), path), path: path}, nil
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

// Join returns the path of name in d, for messages.
func (d *Dir) Join(name string) string { return filepath.Join(d.path, name) }

// OpenFile opens name (one path component) in d without following a symlink and fails
// unless it is a regular file.
func (d *Dir) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return nil, fmt.Errorf("open %q in %s: not a single path component", name, d.path)
	}
	fd, err := unix.Openat(int(d.f.Fd()), name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, uint32(perm.Perm()))
	if err != nil {
		return nil, pathError("open", d.Join(name), err)
	}
	return regular(fd, d.Join(name))
}

// Names lists the directory's entries.
func (d *Dir) Names() ([]string, error) {
	if _, err := d.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("list %s: %w", d.path, err)
	}
	names, err := d.f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.path, err)
	}
	return names, nil
}

// Rename renames old to new inside d (renameat).
func (d *Dir) Rename(old, new string) error {
	fd := int(d.f.Fd())
	if err := unix.Renameat(fd, old, fd, new); err != nil {
		return fmt.Errorf("rename %s to %s: %w", d.Join(old), new, err)
	}
	return nil
}

// Remove unlinks name from d.
func (d *Dir) Remove(name string) error {
	if err := unix.Unlinkat(int(d.f.Fd()), name, 0); err != nil {
		return fmt.Errorf("remove %s: %w", d.Join(name), err)
	}
	return nil
}

// Sync fsyncs the directory, making created, renamed and removed entries durable.
func (d *Dir) Sync(s Syncer) error {
	if err := s.Sync(d.f); err != nil {
		return fmt.Errorf("fsync dir %s: %w", d.path, err)
	}
	return nil
}

// Close closes the directory fd.
func (d *Dir) Close() error { return d.f.Close() }

// WriteAtomic replaces name in d with data: a temporary file is written and fsync'ed,
// renamed over name, and the directory fsync'ed, so a crash leaves the old or the new
// content, never a mix.
func (d *Dir) WriteAtomic(name string, data []byte, s Syncer) error {
	tmp := name + ".tmp"
	_ = unix.Unlinkat(int(d.f.Fd()), tmp, 0) // a leftover of a crash
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", d.Join(tmp), err)
	}
	if err := s.Sync(f); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", d.Join(tmp), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", d.Join(tmp), err)
	}
	if err := d.Rename(tmp, name); err != nil {
		return err
	}
	return d.Sync(s)
}

// Range is a byte range [Off, End) of a file.
type Range struct{ Off, End int64 }

// Quarantine copies the ranges of src into a new file "<base>.quarantine.<n>" in d (n
// the first number not taken), fsyncs it and the directory, and returns its name.
// The bytes are kept for a human to inspect; nothing reads them back.
func (d *Dir) Quarantine(base string, src io.ReaderAt, ranges []Range, s Syncer) (string, error) {
	var f *os.File
	var name string
	for n := 1; ; n++ {
		name = base + ".quarantine." + strconv.Itoa(n)
		var err error
		f, err = d.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) || n >= 1000 {
			return "", fmt.Errorf("create quarantine file for %s: %w", base, err)
		}
	}
	for _, r := range ranges {
		if _, err := io.Copy(f, io.NewSectionReader(src, r.Off, r.End-r.Off)); err != nil {
			f.Close()
			return "", fmt.Errorf("write %s: %w", d.Join(name), err)
		}
	}
	if err := s.Sync(f); err != nil {
		f.Close()
		return "", fmt.Errorf("fsync %s: %w", d.Join(name), err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", d.Join(name), err)
	}
	return name, d.Sync(s)
}
