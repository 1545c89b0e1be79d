package page

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestCreateLayout: a new page is PageSize bytes of zeros but for magic ("OMSP" in
// memory order) and version, and carries exactly the required seals.
func TestCreateLayout(t *testing.T) {
	rw, ro := newPage(t)
	buf := make([]byte, PageSize+1)
	n, err := unix.Pread(int(ro.Fd()), buf, 0)
	require.NoError(t, err)
	require.Equal(t, PageSize, n)
	assert.Equal(t, "OMSP", string(buf[OffMagic:OffMagic+4]))
	assert.Equal(t, Version, binary.LittleEndian.Uint32(buf[OffVersion:]))
	assert.Equal(t, make([]byte, PageSize-8), buf[8:PageSize], "everything after magic and version is zero")

	seals, err := unix.FcntlInt(rw.Fd(), unix.F_GET_SEALS, 0)
	require.NoError(t, err)
	assert.Equal(t, RequiredSeals, seals)
	require.NoError(t, Verify(rw))
	require.NoError(t, Verify(ro))
}

// TestReadOnlyIsReadOnly: the fd for oomd can be mapped for reading but neither mapped
// writable nor written.
func TestReadOnlyIsReadOnly(t *testing.T) {
	_, ro := newPage(t)
	flags, err := unix.FcntlInt(ro.Fd(), unix.F_GETFL, 0)
	require.NoError(t, err)
	assert.Equal(t, unix.O_RDONLY, flags&unix.O_ACCMODE)

	_, err = unix.Mmap(int(ro.Fd()), 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	assert.ErrorIs(t, err, unix.EACCES, "a writable shared mapping of the read-only fd")
	_, err = unix.Pwrite(int(ro.Fd()), []byte{1}, 0)
	assert.ErrorIs(t, err, unix.EBADF, "a write through the read-only fd")
	mem, err := unix.Mmap(int(ro.Fd()), 0, PageSize, unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	require.NoError(t, unix.Munmap(mem))
}

// TestVerifyRefuses: anything but a sealed one-page memfd is refused, and the error says
// what is wrong.
func TestVerifyRefuses(t *testing.T) {
	memfd := func(size int64, seals int) *os.File {
		fd, err := unix.MemfdCreate("verify", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		require.NoError(t, err)
		require.NoError(t, unix.Ftruncate(fd, size))
		if seals != 0 {
			_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
			require.NoError(t, err)
		}
		f := os.NewFile(uintptr(fd), "memfd")
		t.Cleanup(func() { f.Close() })
		return f
	}
	plain, err := os.Create(filepath.Join(t.TempDir(), "page"))
	require.NoError(t, err)
	defer plain.Close()
	require.NoError(t, plain.Truncate(PageSize))
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	defer pr.Close()
	defer pw.Close()

	for _, tc := range []struct {
		name string
		f    *os.File
		want string
	}{
		{"unsealed memfd", memfd(PageSize, 0), "seals SEAL|SHRINK|GROW missing (has none)"},
		{"no shrink seal", memfd(PageSize, unix.F_SEAL_GROW|unix.F_SEAL_SEAL), "seals SHRINK missing (has SEAL|GROW)"},
		{"not sealed against new seals", memfd(PageSize, unix.F_SEAL_GROW|unix.F_SEAL_SHRINK), "seals SEAL missing"},
		{"two pages", memfd(2*PageSize, RequiredSeals), "size 8192, want 4096"},
		{"empty", memfd(0, RequiredSeals), "size 0, want 4096"},
		{"plain file", plain, "cannot read seals (not a memfd?)"},
		{"pipe", pr, "not a regular file"},
	} {
		err := Verify(tc.f)
		require.Error(t, err, tc.name)
		assert.ErrorIs(t, err, ErrInvalidPage, tc.name)
		assert.Contains(t, err.Error(), tc.want, tc.name)
		_, err = NewReader(tc.f)
		assert.ErrorIs(t, err, ErrInvalidPage, "NewReader: %s", tc.name)
	}

	// A sealed page of the right size but not made by Create is no writer's page.
	_, err = NewWriter(memfd(PageSize, RequiredSeals))
	assert.ErrorIs(t, err, ErrInvalidPage)
	assert.ErrorContains(t, err, "magic/version 0x0000000000000000")
}

// TestSubjectCannotResize: the subject, in its own process with the read-write fd,
// cannot shrink or grow the page or change its seals, so oomd's mapping never faults.
// Punching a hole is allowed and only reads back as zeros (BadMagic).
func TestSubjectCannotResize(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	w, err := NewWriter(rw)
	require.NoError(t, err)
	require.NoError(t, w.Publish(7))
	_, st := r.Read()
	require.Equal(t, OK, st)

	c := startChild(t, "resize", rw)
	for _, want := range []string{"truncate0=EPERM", "truncate1=EPERM", "grow=EPERM", "writepast=EPERM", "punchhole=ok", "addseal=EPERM"} {
		c.expect(want)
	}
	require.NoError(t, c.wait())

	var st2 unix.Stat_t
	require.NoError(t, unix.Fstat(int(ro.Fd()), &st2))
	assert.Equal(t, int64(PageSize), st2.Size)
	s, st := r.Read() // would be SIGBUS had the page shrunk
	assert.Equal(t, Unchanged, st)
	assert.Equal(t, uint64(7), s.Bytes)

	// Punching the page itself is the worst the subject can do: zeros, not a fault.
	require.NoError(t, unix.Fallocate(int(rw.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, PageSize))
	_, st = r.Read()
	assert.Equal(t, BadMagic, st)
	require.NoError(t, w.Close())
}

// TestPublishAndRead walks the statuses an honest publisher produces, then the ones a
// scribbling subject does.
func TestPublishAndRead(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	w, err := NewWriter(rw)
	require.NoError(t, err)
	require.NoError(t, ro.Close(), "the mappings outlive the fds")
	require.NoError(t, rw.Close())

	s, st := r.Read()
	assert.Equal(t, NeverWritten, st)
	assert.Equal(t, Sample{}, s)

	require.NoError(t, w.Publish(5))
	s, st = r.Read()
	assert.Equal(t, OK, st)
	assert.Equal(t, Sample{Bytes: 5, Counter: 1, Seq: 2}, s)
	s, st = r.Read()
	assert.Equal(t, Unchanged, st)
	assert.Equal(t, Sample{Bytes: 5, Counter: 1, Seq: 2}, s)

	require.NoError(t, w.Publish(5)) // same value, new sample
	s, st = r.Read()
	assert.Equal(t, OK, st)
	assert.Equal(t, Sample{Bytes: 5, Counter: 2, Seq: 4}, s)
	require.NoError(t, w.Publish(1<<40))
	require.NoError(t, w.Publish(3<<30))
	s, st = r.Read()
	assert.Equal(t, OK, st, "only the latest value counts")
	assert.Equal(t, Sample{Bytes: 3 << 30, Counter: 4, Seq: 8}, s)

	require.NoError(t, w.Close())
	assert.ErrorIs(t, w.Publish(9), ErrClosed)
	assert.ErrorIs(t, w.Close(), ErrClosed)
	s, st = r.Read()
	assert.Equal(t, Closed, st)
	assert.Equal(t, Sample{Bytes: 3 << 30, Counter: 4, Seq: 10}, s, "the last value stays readable")

	require.NoError(t, r.Close())
	s, st = r.Read()
	assert.Equal(t, Closed, st)
	assert.Equal(t, uint64(3<<30), s.Bytes)
}

// TestScribbledHeader: a wrong magic or version is reported as such, whatever the rest
// holds, and the reader recovers when the header is right again.
func TestScribbledHeader(t *testing.T) {
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	mem := scribbler(t, rw)
	w, err := NewWriter(rw)
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, w.Publish(11))

	mem[OffMagic] = 'o'
	s, st := r.Read()
	assert.Equal(t, BadMagic, st)
	assert.Equal(t, Sample{}, s, "no OK sample yet")
	mem[OffMagic] = 'O'
	binary.LittleEndian.PutUint32(mem[OffVersion:], 2)
	_, st = r.Read()
	assert.Equal(t, BadVersion, st)
	binary.LittleEndian.PutUint32(mem[OffVersion:], Version)
	s, st = r.Read()
	assert.Equal(t, OK, st)
	assert.Equal(t, uint64(11), s.Bytes)

	mem[OffMagic+3] = 0
	s, st = r.Read()
	assert.Equal(t, BadMagic, st)
	assert.Equal(t, uint64(11), s.Bytes, "the last OK sample")

	// Unknown flag bits are ignored.
	mem[OffMagic+3] = 'P'
	mem[OffFlags+7] = 0x80
	require.NoError(t, w.Publish(12))
	s, st = r.Read()
	assert.Equal(t, OK, st)
	assert.Equal(t, uint64(12), s.Bytes)
}

// TestStatusString keeps the names stable for logs and events.
func TestStatusString(t *testing.T) {
	for st, want := range map[Status]string{OK: "ok", Unchanged: "unchanged", NeverWritten: "never-written",
		Torn: "torn", BadMagic: "bad-magic", BadVersion: "bad-version", Closed: "closed", 200: "status(200)"} {
		assert.Equal(t, want, st.String())
	}
}
