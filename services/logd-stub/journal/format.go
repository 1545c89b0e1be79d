package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"oomd.dev/oomd/gen/bounds"
	framing "oomd.dev/oomd/internal/frame"
)

const (
	// MaxWriterBytes bounds a writer name (Journal.open in oomd.capnp).
	MaxWriterBytes = bounds.MaxWriterBytes
	// MaxDataBytes bounds one record's opaque data. An AuditRecord with a 64-byte subject
	// and a 256-byte reason encodes to about 450 bytes; the rest is room for fields a
	// later schema adds.
	MaxDataBytes = 2048

	frameHeaderBytes = framing.HeaderBytes
	// entryFixedBytes: kind, seq, writerSeq, append time (Unix ns), writer length. The
	// entries of journals written before the time was kept (kindEntryV1) lack the time.
	entryFixedBytes   = 1 + 8 + 8 + 8 + 1
	entryFixedBytesV1 = entryFixedBytes - 8
	// MaxPayloadBytes bounds a frame's payload; a larger length on disk is corruption.
	// Checkpoints are bounded separately by Options.MaxWriters and share this limit.
	MaxPayloadBytes = 1 << 16

	kindEntryV1    = 0x01 // an entry without its append time (read, never written)
	kindCheckpoint = 0x02
	// kindGap says that seqs from..to are not in the journal: lost to damage found by
	// recovery, or skipped so that no seq is ever reused. Readers count them as missed.
	kindGap = 0x03
	// kindEntry is an entry with logd's wall time at append: the time shown to people
	// ("when was it killed"), never used for ordering.
	kindEntry    = 0x04
	gapBytes     = 1 + 8 + 8
	gapFrameSize = frameHeaderBytes + gapBytes

	segmentSuffix = ".seg"
	// sparseEvery is how many entries share one mark of the in-memory offset index: reads
	// scan at most this many frames before reaching their start.
	sparseEvery = 64
)

// entryFrameBytes is the on-disk size of an entry frame.
func entryFrameBytes(writer string, data []byte) int64 {
	return int64(frameHeaderBytes + entryFixedBytes + len(writer) + len(data))
}

// checkpointFrameBytes bounds the checkpoint of a table of at most n writers.
func checkpointFrameBytes(n int) int64 {
	return int64(frameHeaderBytes + 1 + 2 + n*(1+MaxWriterBytes+8))
}

func encodeEntry(buf []byte, seq, writerSeq uint64, atNs int64, writer string, data []byte) []byte {
	buf, start := framing.Begin(buf)
	buf = append(buf, kindEntry)
	buf = binary.LittleEndian.AppendUint64(buf, seq)
	buf = binary.LittleEndian.AppendUint64(buf, writerSeq)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(atNs))
	buf = append(buf, byte(len(writer)))
	buf = append(buf, writer...)
	buf = append(buf, data...)
	return framing.Seal(buf, start)
}

func encodeGap(buf []byte, from, to uint64) []byte {
	buf, start := framing.Begin(buf)
	buf = append(buf, kindGap)
	buf = binary.LittleEndian.AppendUint64(buf, from)
	buf = binary.LittleEndian.AppendUint64(buf, to)
	return framing.Seal(buf, start)
}

// encodeCheckpoint writes the writer table sorted by name, so the same table always
// produces the same bytes.
func encodeCheckpoint(buf []byte, writers map[string]*writerState) []byte {
	names := make([]string, 0, len(writers))
	for w := range writers {
		names = append(names, w)
	}
	sort.Strings(names)
	buf, start := framing.Begin(buf)
	buf = append(buf, kindCheckpoint)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(names)))
	for _, w := range names {
		buf = append(buf, byte(len(w)))
		buf = append(buf, w...)
		buf = binary.LittleEndian.AppendUint64(buf, writers[w].lastWriterSeq)
	}
	return framing.Seal(buf, start)
}

// frame is one decoded frame. For an entry, writer and data alias the read buffer.
type frame struct {
	kind      byte
	seq       uint64
	writerSeq uint64
	writer    []byte
	data      []byte
	atNs      int64 // an entry's append time (0: an entry of kindEntryV1)
	// checkpoint holds a checkpoint's table.
	checkpoint []checkpointEntry
	// to is a gap's last seq (seq is its first).
	to   uint64
	size int64
}

type checkpointEntry struct {
	writer        string
	lastWriterSeq uint64
}

// frameReader decodes journal frames from a segment (internal/frame does the length,
// checksum and torn-tail detection; this adds the journal's payload kinds).
type frameReader struct{ r *framing.Reader }

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: framing.NewReader(r, MaxPayloadBytes)}
}

// next returns the next frame, io.EOF at a clean end, an error wrapping
// framing.ErrTorn at a partial frame, or another error describing the corruption.
func (fr *frameReader) next() (frame, error) {
	payload, err := fr.r.Next()
	if err != nil {
		return frame{}, err
	}
	f, err := decodePayload(payload)
	f.size = frameHeaderBytes + int64(len(payload))
	return f, err
}

func decodePayload(p []byte) (frame, error) {
	if len(p) == 0 {
		return frame{}, errors.New("empty payload")
	}
	switch p[0] {
	case kindEntry, kindEntryV1:
		fixed := entryFixedBytes
		if p[0] == kindEntryV1 {
			fixed = entryFixedBytesV1
		}
		if len(p) < fixed {
			return frame{}, fmt.Errorf("entry of %d bytes is shorter than its header", len(p))
		}
		// Both versions read as kindEntry: the rest of the journal knows one kind.
		f := frame{kind: kindEntry,
			seq:       binary.LittleEndian.Uint64(p[1:]),
			writerSeq: binary.LittleEndian.Uint64(p[9:]),
		}
		if p[0] == kindEntry {
			f.atNs = int64(binary.LittleEndian.Uint64(p[17:]))
		}
		wlen := int(p[fixed-1])
		rest := p[fixed:]
		if wlen == 0 || wlen > MaxWriterBytes || wlen > len(rest) || len(rest)-wlen > MaxDataBytes {
			return frame{}, fmt.Errorf("entry seq %d: bad writer length %d", f.seq, wlen)
		}
		f.writer, f.data = rest[:wlen], rest[wlen:]
		return f, nil
	case kindCheckpoint:
		if len(p) < 3 {
			return frame{}, errors.New("checkpoint shorter than its header")
		}
		n := int(binary.LittleEndian.Uint16(p[1:]))
		rest := p[3:]
		f := frame{kind: kindCheckpoint, checkpoint: make([]checkpointEntry, 0, n)}
		for i := 0; i < n; i++ {
			if len(rest) < 1 {
				return frame{}, errors.New("checkpoint truncated")
			}
			wlen := int(rest[0])
			if wlen == 0 || wlen > MaxWriterBytes || len(rest) < 1+wlen+8 {
				return frame{}, errors.New("checkpoint: bad writer entry")
			}
			f.checkpoint = append(f.checkpoint, checkpointEntry{
				writer:        string(rest[1 : 1+wlen]),
				lastWriterSeq: binary.LittleEndian.Uint64(rest[1+wlen:]),
			})
			rest = rest[1+wlen+8:]
		}
		if len(rest) != 0 {
			return frame{}, errors.New("checkpoint: trailing bytes")
		}
		return f, nil
	case kindGap:
		if len(p) != gapBytes {
			return frame{}, fmt.Errorf("gap of %d bytes, want %d", len(p), gapBytes)
		}
		f := frame{kind: kindGap, seq: binary.LittleEndian.Uint64(p[1:]), to: binary.LittleEndian.Uint64(p[9:])}
		if f.seq == 0 || f.to < f.seq {
			return frame{}, fmt.Errorf("gap %d..%d is empty", f.seq, f.to)
		}
		return f, nil
	default:
		return frame{}, fmt.Errorf("unknown frame kind 0x%02x", p[0])
	}
}

func segmentName(first uint64) string {
	return fmt.Sprintf("%020d%s", first, segmentSuffix)
}

// parseSegmentName returns the first seq named by a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, segmentSuffix)
	if !ok || len(base) != 20 {
		return 0, false
	}
	first, err := strconv.ParseUint(base, 10, 64)
	return first, err == nil && first > 0
}
