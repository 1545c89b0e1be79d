package page

import (
	"unsafe"

	"oomd.dev/oomd/gen/bounds"
)

// The page layout, version 1. All fields are native-endian (little-endian) and naturally
// aligned; everything from HeaderSize to PageSize is reserved and zero. See
// docs/memstat-page.md.
const (
	// PageSize is the size of the memfd and of every mapping of it.
	PageSize = bounds.MemstatPageBytes

	// OffMagic is a u32 written once by execd (Create): Magic.
	OffMagic = 0
	// OffVersion is a u32 written once by execd (Create): Version.
	OffVersion = 4
	// OffSeq is the seqlock u64: odd while a write is in progress, even otherwise,
	// 0 before the first write. Every write cycle raises it by 2.
	OffSeq = 8
	// OffBytes is the published value in bytes (u64).
	OffBytes = 16
	// OffCounter is the publisher's own sample counter (u64), raised by one per
	// publish; 0 means nothing was published yet.
	OffCounter = 24
	// OffFlags is a u64 of Flag bits; readers ignore bits they do not know.
	OffFlags = 32
	// HeaderSize is the size of the defined part of the page.
	HeaderSize = 40

	// Magic is "OMSP" read as a little-endian u32.
	Magic uint32 = 'O' | 'M'<<8 | 'S'<<16 | 'P'<<24
	// Version is the layout version this package writes and reads.
	Version uint32 = 1
)

// Flag bits in the flags word.
const (
	// FlagClosed: the publisher stopped publishing (it closed its writer); the last
	// value stays readable.
	FlagClosed uint64 = 1 << 0
	// Bits 1..63 are reserved: writers leave them zero, readers ignore them.
)

// magicVersion is the first u64 of a valid page: magic in the low half, version in the
// high half (little-endian), so one load checks both.
const magicVersion = uint64(Version)<<32 | uint64(Magic)

// header mirrors the defined part of the page. It is only ever accessed through
// sync/atomic on a pointer into a mapping, never copied.
type header struct {
	magicVersion uint64
	seq          uint64
	bytes        uint64
	counter      uint64
	flags        uint64
}

// Fail to compile if header and the exported offsets disagree.
var (
	_ [OffSeq - unsafe.Offsetof(header{}.seq)]struct{}
	_ [unsafe.Offsetof(header{}.seq) - OffSeq]struct{}
	_ [OffBytes - unsafe.Offsetof(header{}.bytes)]struct{}
	_ [unsafe.Offsetof(header{}.bytes) - OffBytes]struct{}
	_ [OffCounter - unsafe.Offsetof(header{}.counter)]struct{}
	_ [unsafe.Offsetof(header{}.counter) - OffCounter]struct{}
	_ [OffFlags - unsafe.Offsetof(header{}.flags)]struct{}
	_ [unsafe.Offsetof(header{}.flags) - OffFlags]struct{}
	_ [HeaderSize - unsafe.Sizeof(header{})]struct{}
	_ [unsafe.Sizeof(header{}) - HeaderSize]struct{}
)

// headerOf returns the header at the start of a mapping of at least HeaderSize bytes.
func headerOf(mem []byte) *header {
	return (*header)(unsafe.Pointer(&mem[0]))
}
