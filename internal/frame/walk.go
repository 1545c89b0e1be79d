package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// ErrReject is what a Walk accept function wraps to refuse an intact frame (its payload
// does not decode, or does not fit where it was found): the frame is damage.
var ErrReject = errors.New("frame rejected")

// Damage is a byte range of a file that holds no acceptable frame.
type Damage struct {
	Off, End int64
	Cause    error // why the frame at Off was bad
	// AtEnd: no acceptable frame follows; the range runs to the end of the file.
	AtEnd bool
	// Torn: AtEnd, and the range is what a crash mid-append leaves: an incomplete frame
	// (its header or its length run past the end of the file) or zero bytes (a file
	// extended before its data reached the disk). Anything else is corruption.
	Torn bool
	// Exhausted: the resynchronisation budget ran out before the end; the range was not
	// searched to the end.
	Exhausted bool
}

// WalkOptions bound a Walk.
type WalkOptions struct {
	// MaxPayload is the largest payload accepted, and so the most bytes hashed per
	// candidate offset while resynchronising. Keep it as tight as the format allows.
	MaxPayload int
	// ResyncBudget bounds the bytes hashed while looking for the next frame after damage,
	// over the whole walk. 0: 64 × the file size + 1 MiB. Past it, the rest of the file
	// is one Damage with Exhausted set.
	ResyncBudget int64
}

// Walk reads the frames of r, a file of size bytes, from offset 0, and calls accept for
// each intact one (resync reports whether it was found by scanning after damage). A
// frame is kept only if its checksum matches and accept returns nil; accept must not
// keep payload, and must change nothing when it returns an error (wrapping ErrReject;
// any other error ends the walk).
//
// After a bad frame Walk does not give up on the rest of the file: it tries every later
// offset for a frame header whose length fits, whose CRC matches and whose payload
// accept takes, and resumes there. Garbage can pass only by matching a CRC32C and then
// decoding, and the scan costs at most MaxPayload hashed bytes per offset and
// ResyncBudget in all. The bytes in between are returned as Damage, in file order.
func Walk(r io.ReaderAt, size int64, o WalkOptions, accept func(off int64, payload []byte, resync bool) error) ([]Damage, error) {
	if o.ResyncBudget == 0 {
		o.ResyncBudget = 64*size + 1<<20
	}
	w := &window{r: r, size: size, buf: make([]byte, max(256<<10, 2*(o.MaxPayload+HeaderBytes)))}
	var damage []Damage
	budget := o.ResyncBudget
	off := int64(0)
	for off < size {
		payload, err := w.frameAt(off, o.MaxPayload)
		if err == nil {
			if err = accept(off, payload, false); err == nil {
				off += HeaderBytes + int64(len(payload))
				continue
			}
			if !errors.Is(err, ErrReject) {
				return damage, err
			}
		} else if !errors.Is(err, ErrTorn) && !errors.Is(err, ErrCorrupt) {
			return damage, err
		}
		d := Damage{Off: off, Cause: err}
		next, n, found, rerr := w.resync(off+1, o.MaxPayload, &budget, accept)
		if rerr != nil {
			return damage, rerr
		}
		if found {
			d.End = next
			damage = append(damage, d)
			off = next + n
			continue
		}
		d.End, d.AtEnd, d.Exhausted = size, true, budget <= 0
		if !d.Exhausted {
			zero, zerr := w.allZero(off, size)
			if zerr != nil {
				return damage, zerr
			}
			d.Torn = errors.Is(err, ErrTorn) || zero
		}
		damage = append(damage, d)
		break
	}
	return damage, nil
}

// window serves byte ranges of a ReaderAt from one buffer, refilled forward.
type window struct {
	r     io.ReaderAt
	size  int64
	buf   []byte
	start int64
	n     int
}

// bytes returns [off, off+n) of the file; the caller has checked off+n <= size and
// n <= len(buf).
func (w *window) bytes(off int64, n int) ([]byte, error) {
	if off < w.start || off+int64(n) > w.start+int64(w.n) {
		want := int(min(int64(len(w.buf)), w.size-off))
		got, err := w.r.ReadAt(w.buf[:want], off)
		if got < want {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read at %d: %w", off, err)
		}
		w.start, w.n = off, got
	}
	i := int(off - w.start)
	return w.buf[i : i+n], nil
}

// header returns the length and checksum stored at off, or an error wrapping ErrTorn
// or ErrCorrupt as Reader.Next would.
func (w *window) header(off int64, maxPayload int) (size int, crc uint32, err error) {
	if w.size-off < HeaderBytes {
		return 0, 0, fmt.Errorf("%w: %d of %d header bytes", ErrTorn, w.size-off, HeaderBytes)
	}
	hdr, err := w.bytes(off, HeaderBytes)
	if err != nil {
		return 0, 0, err
	}
	l := binary.LittleEndian.Uint32(hdr)
	if l == 0 || uint64(l) > uint64(maxPayload) {
		return 0, 0, fmt.Errorf("%w: impossible length %d", ErrCorrupt, l)
	}
	if avail := w.size - off - HeaderBytes; int64(l) > avail {
		return 0, 0, fmt.Errorf("%w: %d of %d payload bytes", ErrTorn, avail, l)
	}
	return int(l), binary.LittleEndian.Uint32(hdr[4:]), nil
}

func (w *window) frameAt(off int64, maxPayload int) ([]byte, error) {
	l, want, err := w.header(off, maxPayload)
	if err != nil {
		return nil, err
	}
	b, err := w.bytes(off, HeaderBytes+l)
	if err != nil {
		return nil, err
	}
	if crc := crc32.Update(crc32.Update(0, castagnoli, b[:4]), castagnoli, b[HeaderBytes:]); crc != want {
		return nil, fmt.Errorf("%w: checksum stored %08x, computed %08x", ErrCorrupt, want, crc)
	}
	return b[HeaderBytes:], nil
}

// resync finds the first offset >= from holding a frame accept takes.
func (w *window) resync(from int64, maxPayload int, budget *int64, accept func(int64, []byte, bool) error) (off, n int64, found bool, err error) {
	for off = from; off+HeaderBytes < w.size && *budget > 0; off++ {
		l, want, herr := w.header(off, maxPayload)
		if herr != nil {
			if !errors.Is(herr, ErrTorn) && !errors.Is(herr, ErrCorrupt) {
				return 0, 0, false, herr
			}
			continue
		}
		b, err := w.bytes(off, HeaderBytes+l)
		if err != nil {
			return 0, 0, false, err
		}
		*budget -= int64(l)
		if crc32.Update(crc32.Update(0, castagnoli, b[:4]), castagnoli, b[HeaderBytes:]) != want {
			continue
		}
		switch aerr := accept(off, b[HeaderBytes:], true); {
		case aerr == nil:
			return off, HeaderBytes + int64(l), true, nil
		case !errors.Is(aerr, ErrReject):
			return 0, 0, false, aerr
		}
	}
	return 0, 0, false, nil
}

func (w *window) allZero(off, end int64) (bool, error) {
	for off < end {
		n := int(min(int64(len(w.buf)), end-off))
		b, err := w.bytes(off, n)
		if err != nil {
			return false, err
		}
		for _, c := range b {
			if c != 0 {
				return false, nil
			}
		}
		off += int64(n)
	}
	return true, nil
}
