package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"oomd.dev/oomd/internal/safefile"
)

// EventSeqBatch is how many event seqs one write of the high-water mark reserves: an
// fsync per EventSeqBatch events rather than per event, at the price of a gap of at most
// that many unused numbers after a crash.
const EventSeqBatch = 1024

// ErrEventSeqDamaged is wrapped when the high-water mark file cannot be read back.
var ErrEventSeqDamaged = errors.New("event seq high-water mark damaged")

// EventSeqFile keeps the event seq high-water mark, so that event seqs never go
// backwards across an oomd restart: no run ever hands out a seq above the reserved
// number on disk, and the next run starts above it (policy.Config.EventSeqBase). The
// file is JSON, {"reserved": N}, replaced atomically (temp, fsync, rename, directory
// fsync) once per EventSeqBatch events. It is the pattern of logd's seq.hwm, smaller:
// oomd's events are not durable themselves, so there is no "durable" mark to keep.
type EventSeqFile struct {
	path     string
	syncer   safefile.Syncer
	reserved uint64
}

type eventSeqState struct {
	Reserved uint64 `json:"reserved"`
}

// OpenEventSeq reads the high-water mark at path (a missing file is 0: the first run)
// and at once reserves the first batch above it. base is the EventSeqBase for the core.
// A damaged file is an error wrapping ErrEventSeqDamaged; the caller may then go on from
// base 0 (the watchdog must come up) with the returned file, which has been rewritten.
func OpenEventSeq(path string, s safefile.Syncer) (f *EventSeqFile, base uint64, err error) {
	if s == nil {
		s = safefile.OS
	}
	f = &EventSeqFile{path: path, syncer: s}
	var damaged error
	raw, err := safefile.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, 0, fmt.Errorf("read event seq high-water mark: %w", err)
	default:
		var st eventSeqState
		if err := json.Unmarshal(raw, &st); err != nil {
			damaged = fmt.Errorf("%w: %s: %v; event seqs restart at 1", ErrEventSeqDamaged, path, err)
		} else {
			base = st.Reserved
		}
	}
	if err := f.Cover(base + 1); err != nil {
		return nil, 0, err
	}
	return f, base, damaged
}

// Reserved is the highest seq the file on disk covers.
func (f *EventSeqFile) Reserved() uint64 { return f.reserved }

// Cover makes sure seq is at or below the durable high-water mark, reserving the next
// batch when it is not. Call it before an event with that seq is shown to anyone.
func (f *EventSeqFile) Cover(seq uint64) error {
	if seq <= f.reserved {
		return nil
	}
	next := seq - 1 + EventSeqBatch
	b, _ := json.Marshal(eventSeqState{Reserved: next})
	d, err := safefile.OpenDir(filepath.Dir(f.path), false)
	if err != nil {
		return fmt.Errorf("reserve event seqs: %w", err)
	}
	defer d.Close()
	if err := d.WriteAtomic(filepath.Base(f.path), append(b, '\n'), f.syncer); err != nil {
		return fmt.Errorf("reserve event seqs in %s: %w", f.path, err)
	}
	f.reserved = next
	return nil
}
