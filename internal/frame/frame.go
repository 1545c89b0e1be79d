// Package frame is the length-prefixed, checksummed framing of oomd's durable files (it
// is the frame layout of logd's journal segments, and oomd's audit spill file uses it):
//
//	frame := len:u32 crc:u32 payload[len]      little-endian; crc = CRC32C(len bytes ++ payload)
//
// len is 1..the reader's maximum. Reader stops at the first frame that is short (a torn
// write: ErrTorn), has an impossible length or a wrong checksum (ErrCorrupt). Recovery
// uses Walk instead, which does not stop there: it resynchronises on the next intact
// frame, so damage costs only the damaged bytes, and it tells a torn tail (an incomplete
// frame or zeros at the very end: a crash mid-append) from corruption (anything else).
package frame

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// HeaderBytes is the size of a frame header.
const HeaderBytes = 8

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors from Reader.Next besides io.EOF (a clean end) and read errors.
var (
	// ErrTorn: the data ended inside a frame, the normal result of a crash mid-write.
	ErrTorn = errors.New("torn frame")
	// ErrCorrupt: an impossible length or a checksum mismatch.
	ErrCorrupt = errors.New("corrupt frame")
)

// Begin reserves a header at the end of buf; append the payload, then call Seal with the
// returned start.
func Begin(buf []byte) (out []byte, start int) {
	return append(buf, make([]byte, HeaderBytes)...), len(buf)
}

// Seal fills in the header of the frame at buf[start:], whose payload follows the
// reserved header bytes.
func Seal(buf []byte, start int) []byte {
	payload := buf[start+HeaderBytes:]
	binary.LittleEndian.PutUint32(buf[start:], uint32(len(payload)))
	crc := crc32.Update(0, castagnoli, buf[start:start+4])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.LittleEndian.PutUint32(buf[start+4:], crc)
	return buf
}

// Append appends one frame holding payload to buf.
func Append(buf, payload []byte) []byte {
	buf, start := Begin(buf)
	buf = append(buf, payload...)
	return Seal(buf, start)
}

// Reader decodes frames, reusing one buffer.
type Reader struct {
	r          *bufio.Reader
	buf        []byte
	maxPayload int
	offset     int64
}

// NewReader reads frames of at most maxPayload payload bytes from r.
func NewReader(r io.Reader, maxPayload int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), maxPayload: maxPayload}
}

// Offset is the position just after the last frame Next returned intact.
func (fr *Reader) Offset() int64 { return fr.offset }

// Next returns the next frame's payload (valid until the next call), io.EOF at a clean
// end, an error wrapping ErrTorn or ErrCorrupt, or a read error.
func (fr *Reader) Next() ([]byte, error) {
	var hdr [HeaderBytes]byte
	n, err := io.ReadFull(fr.r, hdr[:])
	if err == io.EOF {
		return nil, io.EOF
	}
	if err == io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("%w: %d of %d header bytes", ErrTorn, n, HeaderBytes)
	}
	if err != nil {
		return nil, err
	}
	size := binary.LittleEndian.Uint32(hdr[:4])
	if size == 0 || uint64(size) > uint64(fr.maxPayload) {
		return nil, fmt.Errorf("%w: impossible length %d", ErrCorrupt, size)
	}
	if cap(fr.buf) < int(size) {
		fr.buf = make([]byte, size)
	}
	payload := fr.buf[:size]
	if n, err := io.ReadFull(fr.r, payload); err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return nil, fmt.Errorf("%w: %d of %d payload bytes", ErrTorn, n, size)
		}
		return nil, err
	}
	crc := crc32.Update(0, castagnoli, hdr[:4])
	crc = crc32.Update(crc, castagnoli, payload)
	if want := binary.LittleEndian.Uint32(hdr[4:]); crc != want {
		return nil, fmt.Errorf("%w: checksum stored %08x, computed %08x", ErrCorrupt, want, crc)
	}
	fr.offset += HeaderBytes + int64(size)
	return payload, nil
}
