// Package tracelog is oomd's live trace: every input its policy core steps, in order,
// in bounded, rotated, checksummed files, so that the minutes before any decision can
// be replayed (oomctl replay) byte for byte, or against another policy.
//
// A trace directory holds files named trace-<run>-<n>.otr: <run> is the oomd run (its
// start time, Unix ns, so runs sort by age), <n> counts the run's files from 1. A file
// is internal/frame frames, each a JSON Record: first a Header, then the core's State
// at that point (policy.State), then one Input per step. So every file replays on its
// own; the files of one run replay as a chain. A file is rotated once it passes
// Options.MaxFileBytes; beyond Options.MaxFiles the oldest files are deleted (any run).
//
// Writes are buffered; the daemon flushes (Flush) at the first tick after anything
// produced output, otherwise every ten seconds, and when its loop ends or panics; so a
// crash that kills the process loses at most ten seconds of quiet inputs, never those
// before a decision once its tick ended. The trace is a
// diagnostic, not an audit: nothing is fsync'ed, and nothing waits for it.
package tracelog

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"oomd.dev/oomd/internal/frame"
	"oomd.dev/oomd/internal/safefile"
	"oomd.dev/oomd/services/oomd/policy"
)

// Format names the file format in every Header; Version changes when an old reader could
// no longer replay a file as written.
const (
	Format  = "oomd-live-trace"
	Version = 1
)

// Defaults: 8 files of 2 MiB. A tick of 100 subjects with changing readings is about
// 10 KiB of inputs, so this keeps the last few minutes at 10 Hz; fewer subjects or a
// quieter machine keep much longer.
const (
	DefaultMaxFileBytes = 2 << 20
	DefaultMaxFiles     = 8
	// MaxRecordBytes bounds one record (a State of MaxSubjects subjects fits).
	MaxRecordBytes = 32 << 20
)

// Header opens every file.
type Header struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	Run     int64  `json:"run"`  // the oomd run: its start time, Unix ns
	File    int    `json:"file"` // 1, 2, ... within the run
}

// Record is one frame's payload: exactly one field is set.
type Record struct {
	Header *Header       `json:"header,omitempty"`
	State  *policy.State `json:"state,omitempty"`
	Input  *policy.Input `json:"input,omitempty"`
}

// Options bound a trace directory. Zero fields take the defaults.
type Options struct {
	MaxFileBytes int64
	MaxFiles     int
}

// Recorder writes one run's trace. It is not safe for concurrent use: the daemon calls
// it from its owner loop, the goroutine that steps the core.
type Recorder struct {
	dir  string
	opts Options
	run  int64
	n    int // files of this run so far

	f      *os.File
	w      *bufio.Writer
	name   string
	size   int64 // bytes of the current file, buffered ones included
	buf    []byte
	inJSON []byte // an input's JSON, reused
	err    error  // the first write error; the recorder then stays off (the watchdog goes on)
}

// Open prepares dir (created 0700 if missing; a symlink is refused) for run. Nothing is
// written until Start.
func Open(dir string, run int64, opts Options) (*Recorder, error) {
	if opts.MaxFileBytes <= 0 {
		opts.MaxFileBytes = DefaultMaxFileBytes
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = DefaultMaxFiles
	}
	if opts.MaxFiles < 2 {
		return nil, fmt.Errorf("trace: max files %d: at least 2 (the file being written and one before it)", opts.MaxFiles)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("trace: %s is not a directory (a symlink is refused)", dir)
	}
	return &Recorder{dir: dir, opts: opts, run: run}, nil
}

// FileName is the name of file n of run.
func FileName(run int64, n int) string { return fmt.Sprintf("trace-%020d-%06d.otr", run, n) }

// Start begins the next file with st (the core's state now). The daemon calls it once
// at start and again whenever Full says so.
func (r *Recorder) Start(st policy.State) error {
	if r.err != nil {
		return r.err
	}
	if err := r.closeFile(); err != nil {
		return r.fail(err)
	}
	r.n++
	r.name = FileName(r.run, r.n)
	f, err := safefile.OpenFile(filepath.Join(r.dir, r.name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return r.fail(err)
	}
	r.f, r.w, r.size = f, bufio.NewWriterSize(f, 64<<10), 0
	if err := r.prune(); err != nil {
		return r.fail(err)
	}
	if err := r.write(Record{Header: &Header{Format: Format, Version: Version, Run: r.run, File: r.n}}); err != nil {
		return err
	}
	return r.write(Record{State: &st})
}

// Input appends one input the core is about to step.
func (r *Recorder) Input(in policy.Input) error {
	if r.err != nil || r.w == nil {
		return r.err
	}
	payload, ok := appendInputRecord(r.inJSON[:0], &in)
	if !ok {
		return r.writeInput(in)
	}
	r.inJSON = payload
	return r.writePayload(payload)
}

// writeInput is Input through json.Marshal (a copy of in escapes; Input's stays put).
func (r *Recorder) writeInput(in policy.Input) error { return r.write(Record{Input: &in}) }

// Full reports whether the current file passed its bound (rotate with Start).
func (r *Recorder) Full() bool { return r.err == nil && r.f != nil && r.size >= r.opts.MaxFileBytes }

// Position is where the next record goes: the file's name and offset, which an audit
// record carries so that the decision points at the inputs before it.
func (r *Recorder) Position() string {
	if r.f == nil || r.err != nil {
		return ""
	}
	return r.name + ":" + strconv.FormatInt(r.size, 10)
}

// Flush writes the buffered records to the file (not fsync'ed).
func (r *Recorder) Flush() error {
	if r.err != nil || r.w == nil {
		return r.err
	}
	if err := r.w.Flush(); err != nil {
		return r.fail(err)
	}
	return nil
}

// Close flushes and closes the current file.
func (r *Recorder) Close() error {
	err := r.closeFile()
	if r.err == nil {
		r.err = errors.New("trace closed")
	}
	return err
}

// Err is the error that turned the recorder off, if any.
func (r *Recorder) Err() error { return r.err }

func (r *Recorder) closeFile() error {
	if r.f == nil {
		return nil
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f, r.w = nil, nil
	return err
}

func (r *Recorder) fail(err error) error {
	if r.err == nil {
		r.err = fmt.Errorf("trace %s: %w", r.dir, err)
		if r.f != nil {
			r.f.Close()
			r.f, r.w = nil, nil
		}
	}
	return r.err
}

func (r *Recorder) write(rec Record) error {
	if r.err != nil {
		return r.err
	}
	if r.w == nil {
		return nil // not started
	}
	payload, err := json.Marshal(rec)
	if err != nil {
		return r.fail(err)
	}
	return r.writePayload(payload)
}

// writePayload frames one record's JSON and writes it.
func (r *Recorder) writePayload(payload []byte) error {
	if len(payload) > MaxRecordBytes {
		return r.fail(fmt.Errorf("record of %d bytes over the bound %d", len(payload), MaxRecordBytes))
	}
	r.buf = frame.Append(r.buf[:0], payload)
	if _, err := r.w.Write(r.buf); err != nil {
		return r.fail(err)
	}
	r.size += int64(len(r.buf))
	return nil
}

// prune deletes the oldest trace files beyond MaxFiles (the current one counts).
func (r *Recorder) prune() error {
	names, err := List(r.dir)
	if err != nil {
		return err
	}
	for len(names) > r.opts.MaxFiles {
		if err := os.Remove(filepath.Join(r.dir, names[0])); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		names = names[1:]
	}
	return nil
}

// List returns the trace files in dir, oldest first (run, then file number).
func List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "trace-") && strings.HasSuffix(n, ".otr") && e.Type().IsRegular() {
			names = append(names, n)
		}
	}
	slices.Sort(names) // zero-padded: lexical order is age order
	return names, nil
}

// File is one trace file as read back.
type File struct {
	Header Header
	State  policy.State
	Inputs []policy.Input
	// Offsets[i] is where Inputs[i] starts in the file (Position's offset).
	Offsets []int64
	// Damage says why reading stopped before the end ("" = clean). A torn last frame is
	// what a crash leaves; anything else is damage. Either way the inputs before it
	// replay.
	Damage string
}

// ReadFile reads a trace file.
func ReadFile(path string) (*File, error) {
	f, err := safefile.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Read(f)
}

// Read reads a trace file's content.
func Read(r io.Reader) (*File, error) {
	fr := frame.NewReader(bufio.NewReader(r), MaxRecordBytes)
	out := &File{}
	for n := 0; ; n++ {
		off := fr.Offset()
		payload, err := fr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if n < 2 {
				return nil, fmt.Errorf("trace: record %d: %w", n+1, err)
			}
			out.Damage = fmt.Sprintf("record %d at offset %d: %v", n+1, off, err)
			break
		}
		var rec Record
		dec := json.NewDecoder(strings.NewReader(string(payload)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			if n < 2 {
				return nil, fmt.Errorf("trace: record %d: %w", n+1, err)
			}
			out.Damage = fmt.Sprintf("record %d at offset %d: %v", n+1, off, err)
			break
		}
		switch {
		case n == 0:
			if rec.Header == nil || rec.Header.Format != Format {
				return nil, errors.New("trace: not an oomd live trace (no header)")
			}
			if rec.Header.Version != Version {
				return nil, fmt.Errorf("trace: version %d, this reader knows %d", rec.Header.Version, Version)
			}
			out.Header = *rec.Header
		case n == 1:
			if rec.State == nil {
				return nil, errors.New("trace: the header is not followed by the core's state")
			}
			out.State = *rec.State
		case rec.Input != nil:
			out.Inputs = append(out.Inputs, *rec.Input)
			out.Offsets = append(out.Offsets, off)
		default:
			out.Damage = fmt.Sprintf("record %d at offset %d: not an input", n+1, off)
			return out, nil
		}
	}
	return out, nil
}
