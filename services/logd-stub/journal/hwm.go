package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync/atomic"

	"oomd.dev/oomd/internal/safefile"
)

// The high-water mark file makes "a seq is never reused" independent of the segments:
// when records are cut (damage, a lost tail), the journal continues above every seq it
// may ever have handed out. It is replaced atomically (temp, fsync, rename, directory
// fsync) and only once per hwmBatch records, so appends stay free of extra fsyncs.
//
//	"OOMDHWM1" reserved:u64 durable:u64 crc:u32     crc = CRC32C of the preceding bytes
//
// reserved: no seq above it was ever assigned. durable: every seq up to it was fsync'ed
// (and may have been acknowledged) when the file was written; after a clean Close both
// equal the last seq.
const (
	hwmName  = "seq.hwm"
	hwmBatch = 1024
	hwmBytes = 8 + 8 + 8 + 4
)

var hwmMagic = [8]byte{'O', 'O', 'M', 'D', 'H', 'W', 'M', '1'}

type hwm struct {
	reserved uint64
	durable  uint64
}

func encodeHWM(h hwm) []byte {
	b := make([]byte, 0, hwmBytes)
	b = append(b, hwmMagic[:]...)
	b = binary.LittleEndian.AppendUint64(b, h.reserved)
	b = binary.LittleEndian.AppendUint64(b, h.durable)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

var errNoHWM = errors.New("no high-water mark file")

func decodeHWM(b []byte) (hwm, error) {
	if len(b) != hwmBytes || [8]byte(b[:8]) != hwmMagic {
		return hwm{}, fmt.Errorf("%d bytes without the %q header", len(b), hwmMagic[:])
	}
	if crc32.Checksum(b[:hwmBytes-4], crc32.MakeTable(crc32.Castagnoli)) != binary.LittleEndian.Uint32(b[hwmBytes-4:]) {
		return hwm{}, errors.New("checksum mismatch")
	}
	h := hwm{reserved: binary.LittleEndian.Uint64(b[8:]), durable: binary.LittleEndian.Uint64(b[16:])}
	if h.durable > h.reserved {
		return hwm{}, fmt.Errorf("durable %d above reserved %d", h.durable, h.reserved)
	}
	return h, nil
}

func (j *Journal) readHWM() (hwm, error) {
	f, err := j.dir.OpenFile(hwmName, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return hwm{}, errNoHWM
	}
	if err != nil {
		return hwm{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, hwmBytes+1))
	if err != nil {
		return hwm{}, fmt.Errorf("read %s: %w", j.dir.Join(hwmName), err)
	}
	h, err := decodeHWM(b)
	if err != nil {
		return hwm{}, fmt.Errorf("%s: %w", j.dir.Join(hwmName), err)
	}
	return h, nil
}

// writeHWM makes h durable. Called with mu held (or before the journal is shared).
func (j *Journal) writeHWM(h hwm) error {
	if err := j.dir.WriteAtomic(hwmName, encodeHWM(h), j.sy); err != nil {
		return fmt.Errorf("write high-water mark: %w", err)
	}
	j.hwm = h
	return nil
}

// reserve makes sure seq is covered by the durable high-water mark, advancing it by a
// batch when it is not. Called with mu held.
func (j *Journal) reserve(seq uint64) error {
	if seq <= j.hwm.reserved {
		return nil
	}
	return j.writeHWM(hwm{reserved: seq - 1 + hwmBatch, durable: j.durable})
}

// countingSyncer is every fsync the journal issues: it counts them (Status.Fsyncs) and
// goes through Options.Syncer, the seam tests use to see or fail each one.
type countingSyncer struct {
	inner safefile.Syncer
	n     *atomic.Uint64
}

func (c countingSyncer) Sync(f *os.File) error {
	c.n.Add(1)
	return c.inner.Sync(f)
}
