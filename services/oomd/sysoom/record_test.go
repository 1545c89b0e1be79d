package sysoom

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/safefile"
)

func sample() Record {
	return Record{State: StateComplete, Reason: ReasonOOM, Graceful: false, TeardownMs: 1003,
		NotStopped: []string{"hog-stuck", "logd"}, BootCount: 7, LastBoot: 7}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []Record{
		{},
		sample(),
		{State: StateInProgress, Reason: ReasonUserRequest, Graceful: true, Reported: true, BootCount: 1 << 40, LastBoot: 1<<40 + 3},
	} {
		got, err := Decode(Encode(r))
		require.NoError(t, err)
		if len(r.NotStopped) == 0 {
			r.NotStopped = nil
		}
		assert.Equal(t, r, got)
	}
}

func TestRecordBoundsNames(t *testing.T) {
	r := sample()
	r.NotStopped = nil
	for i := range 100 {
		r.NotStopped = append(r.NotStopped, strings.Repeat("x", 200)+string(rune('a'+i%26)))
	}
	got, err := Decode(Encode(r))
	require.NoError(t, err)
	require.Len(t, got.NotStopped, MaxNames)
	assert.Equal(t, "+69 more", got.NotStopped[MaxNames-1])
	assert.Len(t, got.NotStopped[0], MaxNameBytes)
}

// TestRecordCorruptEveryByte: flipping any bit of any byte of the encoded record (the
// header, the payload, or the zero padding the length says is not part of it) either
// reads as invalid or — only for the padding — as the same record: never as another.
func TestRecordCorruptEveryByte(t *testing.T) {
	r := sample()
	enc := Encode(r)
	for i := range enc {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			b := append([]byte(nil), enc...)
			b[i] ^= mask
			got, err := Decode(b)
			if err == nil {
				assert.Equal(t, r, got, "byte %d ^ %#x decoded as a different record", i, mask)
				assert.GreaterOrEqual(t, i, headerSize+fixedSize+len("hog-stuck")+len("logd")+2, "byte %d ^ %#x inside the record went unnoticed", i, mask)
			} else {
				assert.ErrorIs(t, err, ErrInvalid)
			}
		}
	}
}

// TestRecordTruncatedEveryOffset: a store cut at any length before the record's end
// reads as invalid.
func TestRecordTruncatedEveryOffset(t *testing.T) {
	enc := Encode(sample())
	end := headerSize + fixedSize + len("hog-stuck") + len("logd") + 2
	for n := 0; n <= len(enc); n++ {
		_, err := Decode(enc[:n])
		if n < end {
			assert.ErrorIs(t, err, ErrInvalid, "truncated at %d", n)
		} else {
			assert.NoError(t, err, "cut at %d keeps the whole record", n)
		}
	}
}

// TestRecordTornWrite: a write that reached the store only up to byte k (new prefix,
// old suffix) reads as the old record, the new one, or invalid — never a mix.
func TestRecordTornWrite(t *testing.T) {
	old := Record{State: StateInProgress, Reason: ReasonOOM, BootCount: 3, LastBoot: 3}
	next := Record{State: StateComplete, Reason: ReasonUserRequest, Graceful: true, TeardownMs: 9, BootCount: 3, LastBoot: 3}
	a, b := Encode(old), Encode(next)
	for k := 0; k <= BlockSize; k++ {
		torn := append(append([]byte(nil), b[:k]...), a[k:]...)
		got, err := Decode(torn)
		if err != nil {
			assert.ErrorIs(t, err, ErrInvalid)
			continue
		}
		if got.State == StateInProgress {
			assert.Equal(t, old, got, "torn at %d", k)
		} else {
			assert.Equal(t, next, got, "torn at %d", k)
		}
	}
}

func TestStoreFileBoots(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reboot.rec")
	open := func() *Boot {
		s, err := OpenStore(path)
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		b, err := StartBoot(s)
		require.NoError(t, err)
		return b
	}

	b1 := open()
	assert.Equal(t, uint64(1), b1.Number())
	assert.Empty(t, b1.Marker(), "no record yet")
	require.NoError(t, b1.InProgress(ReasonOOM))
	require.NoError(t, b1.Complete(ReasonOOM, true, 120, nil))

	b2 := open()
	assert.Equal(t, uint64(2), b2.Number())
	assert.Equal(t, "oomd: last reboot reason=oom graceful=true", b2.Marker())
	rec, ok := b2.LastReboot()
	require.True(t, ok)
	assert.Equal(t, uint64(1), rec.BootCount)
	assert.Equal(t, uint32(120), rec.TeardownMs)

	// Reported once: the next start does not repeat it.
	b3 := open()
	assert.Equal(t, uint64(3), b3.Number())
	assert.Empty(t, b3.Marker())

	// A boot that died during the teardown reads as not graceful.
	require.NoError(t, b3.InProgress(ReasonOOM))
	b4 := open()
	assert.Equal(t, "oomd: last reboot reason=oom graceful=false", b4.Marker())

	// Garbage in the store reads as no record, and the store is usable again.
	require.NoError(t, os.WriteFile(path, []byte("OOMR garbage"), 0o600))
	b5 := open()
	assert.Empty(t, b5.Marker())
	assert.Equal(t, uint64(1), b5.Number())
	_, ok = b5.LastReboot()
	assert.False(t, ok)
}

func TestNilStore(t *testing.T) {
	b, err := StartBoot(nil)
	require.NoError(t, err)
	assert.Empty(t, b.Marker())
	assert.NoError(t, b.Complete(ReasonOOM, true, 1, nil))
}

func TestParseAction(t *testing.T) {
	for in, want := range map[string]string{"exit:0": "exit:0", "exit:75": "exit:75", "reboot": "reboot"} {
		a, err := ParseAction(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, a.String())
	}
	for _, in := range []string{"", "exit", "exit:-1", "exit:256", "command:", "reboot:now", "poweroff"} {
		_, err := ParseAction(in)
		assert.Error(t, err, in)
	}
	// command:ARGV existed once; its removal must read as a decision, not a typo.
	_, err := ParseAction("command:/sbin/reboot -f")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "command actions were removed; oomd never starts processes")
}

// TestOutcomeIsNotOverwritten: an "in progress" write that comes after the outcome (its
// fsync was slow and the bound did not wait for it) must not replace the outcome.
func TestOutcomeIsNotOverwritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reboot.rec")
	s, err := OpenStore(path)
	require.NoError(t, err)
	defer s.Close()
	b, err := StartBoot(s)
	require.NoError(t, err)
	require.NoError(t, b.Complete(ReasonOOM, false, 1000, []string{"stuck"}))
	require.NoError(t, b.InProgress(ReasonOOM))
	rec, err := s.Read()
	require.NoError(t, err)
	assert.Equal(t, StateComplete, rec.State)
	assert.Equal(t, []string{"stuck"}, rec.NotStopped)
}

// TestStoreRefusesWhatItWouldDestroy: the store is never opened through a symlink, a
// character device or a FIFO is not a store, and a target whose first block is neither
// zeros nor a record is refused unless Init claims it.
func TestStoreRefusesWhatItWouldDestroy(t *testing.T) {
	dir := t.TempDir()
	precious := bytes.Repeat([]byte("data"), 2048)
	target := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(target, precious, 0o600))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(target, link))

	_, err := OpenStore(link)
	require.ErrorIs(t, err, safefile.ErrSymlink)
	assert.Contains(t, err.Error(), link)
	_, err = OpenStoreWith(link, StoreOptions{Init: true})
	require.ErrorIs(t, err, safefile.ErrSymlink, "Init does not make a symlink acceptable")

	_, err = OpenStore(target)
	require.ErrorIs(t, err, ErrForeignStore)
	assert.Contains(t, err.Error(), "--reboot-record-init")
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, precious, b, "refused means untouched")

	s, err := OpenStoreWith(target, StoreOptions{Init: true})
	require.NoError(t, err, "an explicit init claims it")
	require.NoError(t, s.Write(sample()))
	require.NoError(t, s.Close())
	s, err = OpenStore(target)
	require.NoError(t, err, "a store carrying the record's magic opens without init")
	got, err := s.Read()
	require.NoError(t, err)
	assert.Equal(t, sample(), got)
	require.NoError(t, s.Close())

	zeros := filepath.Join(dir, "zeros.img")
	require.NoError(t, os.WriteFile(zeros, make([]byte, 1<<20), 0o600))
	s, err = OpenStore(zeros)
	require.NoError(t, err, "an all-zero (fresh) disk image needs no init")
	require.NoError(t, s.Close())

	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	_, err = OpenStore(fifo)
	assert.ErrorIs(t, err, safefile.ErrNotRegular)
	_, err = OpenStore("/dev/null")
	assert.ErrorContains(t, err, "not a block device")
}
