package sysoom

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"oomd.dev/oomd/internal/safefile"
)

// The persisted reboot record: one fixed-size block at offset 0 of a file or a raw block
// device, no filesystem. Layout (little-endian):
//
//	off size field
//	  0    4 magic "OOMR"
//	  4    2 version (1)
//	  6    2 payload length n (bytes after the header)
//	  8    4 CRC32C (Castagnoli) of bytes 0..7 and the payload
//	 12    n payload:
//	         1 state (0 none, 1 in progress, 2 complete)
//	         1 reason (oomdpb.RebootReason)
//	         1 flags (bit 0 graceful, bit 1 reported)
//	         1 number of notStopped names k
//	         4 teardownMs
//	         8 bootCount: the boot that wrote the reason
//	         8 lastBoot: the most recent boot that started with this store
//	         k names, each 1 length byte + bytes
//
// The rest of the block is zero. Every field is covered by the CRC, and the length is
// checked against the bytes actually read, so a torn, truncated or corrupted block reads
// as "no valid record", never as another reason.
const (
	BlockSize = 4096
	// MaxNames bounds the notStopped names stored; MaxNameBytes bounds each. Both keep
	// the payload far below BlockSize.
	MaxNames     = 32
	MaxNameBytes = 64

	headerSize  = 12
	fixedSize   = 24
	version     = 1
	flagGrace   = 1 << 0
	flagReportd = 1 << 1
)

var magic = [4]byte{'O', 'O', 'M', 'R'}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// State is where the recorded sequence was when the record was written.
type State uint8

const (
	// StateNone: the store holds only boot counters, no reason.
	StateNone State = iota
	// StateInProgress: a halt was claimed and the teardown started; the machine went
	// down before the outcome was written. Read as "not graceful".
	StateInProgress
	// StateComplete: the outcome was written before the reboot action.
	StateComplete
)

// Reason mirrors oomdpb.RebootReason.
type Reason uint8

const (
	ReasonUnknown Reason = iota
	ReasonOOM
	ReasonUserRequest
)

var reasonNames = [...]string{"unknown", "oom", "userRequest"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// ParseReason maps a reason name ("oom", "userRequest") to its value; anything else is
// ReasonUnknown.
func ParseReason(s string) Reason {
	for i, n := range reasonNames {
		if n == s {
			return Reason(i)
		}
	}
	return ReasonUnknown
}

// Record is the decoded block.
type Record struct {
	State      State
	Reason     Reason
	Graceful   bool
	Reported   bool // an oomd start already reported it
	TeardownMs uint32
	NotStopped []string
	BootCount  uint64 // the boot that wrote the reason
	LastBoot   uint64 // the most recent boot that started with this store
}

// ErrInvalid is wrapped by Decode for anything that is not a whole, intact record.
var ErrInvalid = errors.New("no valid reboot record")

// Encode renders r as one block. Names beyond MaxNames or longer than MaxNameBytes are
// cut (the last kept name then says how many were left out).
func Encode(r Record) []byte {
	b := make([]byte, BlockSize)
	names := r.NotStopped
	if len(names) > MaxNames {
		names = append(names[:MaxNames-1:MaxNames-1], fmt.Sprintf("+%d more", len(r.NotStopped)-MaxNames+1))
	}
	p := b[headerSize:]
	p[0], p[1] = byte(r.State), byte(r.Reason)
	if r.Graceful {
		p[2] |= flagGrace
	}
	if r.Reported {
		p[2] |= flagReportd
	}
	p[3] = byte(len(names))
	binary.LittleEndian.PutUint32(p[4:], r.TeardownMs)
	binary.LittleEndian.PutUint64(p[8:], r.BootCount)
	binary.LittleEndian.PutUint64(p[16:], r.LastBoot)
	n := fixedSize
	for _, name := range names {
		if len(name) > MaxNameBytes {
			name = name[:MaxNameBytes]
		}
		p[n] = byte(len(name))
		n += 1 + copy(p[n+1:], name)
	}
	copy(b[0:4], magic[:])
	binary.LittleEndian.PutUint16(b[4:], version)
	binary.LittleEndian.PutUint16(b[6:], uint16(n))
	binary.LittleEndian.PutUint32(b[8:], checksum(b[:8], p[:n]))
	return b
}

func checksum(head, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(head, crcTable), crcTable, payload)
}

// Decode parses the bytes read from the store (at most BlockSize; fewer when the file
// was short). Any inconsistency wraps ErrInvalid.
func Decode(b []byte) (Record, error) {
	if len(b) < headerSize {
		return Record{}, fmt.Errorf("%w: %d bytes, shorter than the header", ErrInvalid, len(b))
	}
	if [4]byte(b[0:4]) != magic {
		return Record{}, fmt.Errorf("%w: bad magic % x", ErrInvalid, b[0:4])
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != version {
		return Record{}, fmt.Errorf("%w: version %d, want %d", ErrInvalid, v, version)
	}
	n := int(binary.LittleEndian.Uint16(b[6:]))
	if n < fixedSize || headerSize+n > min(len(b), BlockSize) {
		return Record{}, fmt.Errorf("%w: payload length %d does not fit the %d bytes read", ErrInvalid, n, len(b))
	}
	p := b[headerSize : headerSize+n]
	if got, want := checksum(b[:8], p), binary.LittleEndian.Uint32(b[8:]); got != want {
		return Record{}, fmt.Errorf("%w: checksum %08x, want %08x", ErrInvalid, got, want)
	}
	r := Record{
		State:      State(p[0]),
		Reason:     Reason(p[1]),
		Graceful:   p[2]&flagGrace != 0,
		Reported:   p[2]&flagReportd != 0,
		TeardownMs: binary.LittleEndian.Uint32(p[4:]),
		BootCount:  binary.LittleEndian.Uint64(p[8:]),
		LastBoot:   binary.LittleEndian.Uint64(p[16:]),
	}
	if r.State > StateComplete || int(r.Reason) >= len(reasonNames) || p[2]&^(flagGrace|flagReportd) != 0 {
		return Record{}, fmt.Errorf("%w: state %d reason %d flags %#x out of range", ErrInvalid, p[0], p[1], p[2])
	}
	off := fixedSize
	for range int(p[3]) {
		if off >= n || off+1+int(p[off]) > n {
			return Record{}, fmt.Errorf("%w: name list runs past the payload", ErrInvalid)
		}
		l := int(p[off])
		r.NotStopped = append(r.NotStopped, string(p[off+1:off+1+l]))
		off += 1 + l
	}
	if off != n {
		return Record{}, fmt.Errorf("%w: %d bytes after the name list", ErrInvalid, n-off)
	}
	return r, nil
}

// Store is the persistent place of the record: a regular file (created if missing) or
// a raw block device, opened read-write. It only ever reads and writes the first
// BlockSize bytes.
type Store struct {
	f    *os.File
	path string
}

// DeviceWait bounds how long OpenStore waits for a device node under /dev to appear
// (the kernel probes disks asynchronously; oomd may start first).
const DeviceWait = 10 * time.Second

// ErrForeignStore: the store's first block holds data that is neither zeros nor a
// reboot record; writing the record would destroy it.
var ErrForeignStore = errors.New("holds data that is neither zeros nor a reboot record (magic OOMR)")

// StoreOptions change how OpenStoreWith opens a store.
type StoreOptions struct {
	// Init lets a store whose first block holds foreign data be claimed (overwritten
	// at the next write). Without it such a store is refused. oomd's
	// --reboot-record-init.
	Init bool
}

// OpenStore is OpenStoreWith without options.
func OpenStore(path string) (*Store, error) { return OpenStoreWith(path, StoreOptions{}) }

// OpenStoreWith opens path read-write without following a symlink. A path under /dev/
// must be an existing block device: it is never created (a regular file in devtmpfs
// would silently lose the record at the reboot), and it is waited for up to DeviceWait.
// Any other path is a regular file, created if it does not exist. Either way the first
// BlockSize bytes must be all zero (a fresh disk or file) or start with the record's
// magic, unless o.Init is set: a mistyped path must not cost someone's data.
func OpenStoreWith(path string, o StoreOptions) (*Store, error) {
	device := strings.HasPrefix(filepath.Clean(path), "/dev/")
	deadline := time.Now().Add(DeviceWait)
	var f *os.File
	for {
		var err error
		if device {
			var mode os.FileMode
			f, mode, err = safefile.OpenNode(path, os.O_RDWR, 0)
			if err == nil && (mode&os.ModeDevice == 0 || mode&os.ModeCharDevice != 0) {
				f.Close()
				return nil, fmt.Errorf("open reboot record store %s: %s is not a block device", path, mode.Type())
			}
		} else {
			f, err = safefile.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		}
		if err == nil {
			break
		}
		if !device || !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			return nil, fmt.Errorf("open reboot record store: %w", err)
		}
		time.Sleep(50 * time.Millisecond) // polling for a device node: no event to wait on
	}
	s := &Store{f: f, path: path}
	if o.Init {
		return s, nil
	}
	b := make([]byte, BlockSize)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, fmt.Errorf("read reboot record store %s: %w", path, err)
	}
	if n >= len(magic) && [4]byte(b[:4]) == magic {
		return s, nil
	}
	for _, c := range b[:n] {
		if c != 0 {
			f.Close()
			return nil, fmt.Errorf("reboot record store %s %w; refusing to overwrite it: check the path, or pass --reboot-record-init to claim it", path, ErrForeignStore)
		}
	}
	return s, nil
}

// Path is the store's path.
func (s *Store) Path() string { return s.path }

// Read returns the record, or an error wrapping ErrInvalid when the store holds none
// (empty, torn, corrupt), or another error when it cannot be read at all.
func (s *Store) Read() (Record, error) {
	b := make([]byte, BlockSize)
	n, err := s.f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Record{}, fmt.Errorf("read reboot record %s: %w", s.path, err)
	}
	return Decode(b[:n])
}

// Write replaces the record and returns only once it is on stable storage (fsync).
func (s *Store) Write(r Record) error {
	if _, err := s.f.WriteAt(Encode(r), 0); err != nil {
		return fmt.Errorf("write reboot record %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync reboot record %s: %w", s.path, err)
	}
	return nil
}

// Close closes the store.
func (s *Store) Close() error { return s.f.Close() }
