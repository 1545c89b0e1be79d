package journal

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.uber.org/zap"

	framing "oomd.dev/oomd/internal/frame"
	"oomd.dev/oomd/internal/safefile"
)

func (j *Journal) recover() error {
	names, err := j.dir.Names()
	if err != nil {
		return fmt.Errorf("list journal dir: %w", err)
	}
	for _, name := range names {
		if strings.HasSuffix(name, ".tmp") {
			// A rewrite or high-water mark update that a crash interrupted; the original
			// is still in place.
			if err := j.dir.Remove(name); err != nil {
				return err
			}
			continue
		}
		first, ok := parseSegmentName(name)
		if !ok {
			continue
		}
		f, err := j.dir.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open segment: %w", err)
		}
		j.segments = append(j.segments, &segment{first: first, last: first - 1, f: f, path: j.dir.Join(name)})
	}
	sort.Slice(j.segments, func(a, b int) bool { return j.segments[a].first < j.segments[b].first })

	h, herr := j.readHWM()
	switch {
	case errors.Is(herr, errNoHWM) && len(j.segments) > 0:
		j.log.Warn("journal has no high-water mark file (written by an older logd?): a cut at the very end cannot be detected this once",
			zap.String("dir", j.dir.Path()))
	case herr != nil && !errors.Is(herr, errNoHWM):
		j.log.Error("journal high-water mark unreadable: a cut at the very end cannot be detected this once", zap.Error(herr))
	}
	hwmKnown := herr == nil

	for i, s := range j.segments {
		if i > 0 && s.first <= j.segments[i-1].last {
			return fmt.Errorf("segment %s starts at seq %d, inside the previous segment (ends at %d): the directory was tampered with", s.path, s.first, j.segments[i-1].last)
		}
		var next uint64 // first seq of the next segment, 0 for the newest
		if i+1 < len(j.segments) {
			next = j.segments[i+1].first
		}
		bound := next
		if next == 0 && hwmKnown {
			bound = max(h.reserved, s.first) + 1
		}
		if err := j.scan(s, next, bound); err != nil {
			return err
		}
		// Frames the previous process wrote but never fsync'ed can still sit dirty in
		// the page cache; syncing now makes everything recovered durable before any of
		// it is served or acknowledged.
		if err := j.fsync(s.f); err != nil {
			return fmt.Errorf("fsync segment %s: %w", s.path, err)
		}
	}

	if len(j.segments) == 0 {
		if h.durable > 0 {
			j.log.Error("journal corrupt: every segment is missing; continuing above the high-water mark",
				zap.String("dir", j.dir.Path()), zap.Uint64("records_cut", h.durable), zap.Uint64("reserved", h.reserved))
			j.found.Corruptions++
			j.found.LostSeqs += h.durable
			j.damage = append(j.damage, Damage{Offset: -1, FirstLost: 1, LastLost: h.durable,
				Cause: fmt.Sprintf("records cut: every segment missing (%d acknowledged records)", h.durable)})
		}
		if err := j.startSegment(h.reserved + 1); err != nil {
			return err
		}
	} else if a := j.active(); a.size == 0 {
		// The crash cut even the checkpoint: write it again so this segment alone still
		// carries the writer table once older segments rotate away.
		j.buf = encodeCheckpoint(j.buf[:0], j.writers)
		if err := j.writeAt(a, j.buf); err != nil {
			return err
		}
		if err := j.fsync(a.f); err != nil {
			return fmt.Errorf("fsync segment %s: %w", a.path, err)
		}
	}
	a := j.active()
	// Records acknowledged before the crash are missing from the end: continue above
	// every seq that may have been handed out, and say which are gone.
	if hwmKnown && a.last < h.durable {
		lost := h.durable - a.last
		j.log.Error("journal corrupt: acknowledged records are missing from the end of the newest segment",
			zap.String("segment", a.path), zap.Uint64("seq", a.last), zap.Uint64("durable_before", h.durable),
			zap.Uint64("records_cut", lost), zap.Uint64("reserved", h.reserved))
		if n := len(j.damage); j.endsCorrupt && n > 0 && j.damage[n-1].Segment == baseName(a.path) {
			// The quarantined end held them: one finding, now with its count.
			j.damage[n-1].FirstLost, j.damage[n-1].LastLost = a.last+1, h.durable
		} else {
			j.found.Corruptions++
			j.damage = append(j.damage, Damage{Segment: baseName(a.path), Offset: -1, FirstLost: a.last + 1, LastLost: h.durable,
				Cause: fmt.Sprintf("records cut: %d acknowledged records missing from the end", lost)})
		}
		j.found.LostSeqs += lost
		j.endsCorrupt = true
	}
	if j.endsCorrupt {
		if !hwmKnown {
			j.log.Error("journal end damaged and no high-water mark: continuing after the last intact seq, which may reuse a seq a reader saw",
				zap.Uint64("seq", a.last))
		} else if h.reserved > a.last {
			if err := j.appendGap(a, a.last+1, h.reserved); err != nil {
				return err
			}
		}
	}
	j.last = a.last
	j.durable = j.last
	if err := j.dropOldest(); err != nil {
		return err
	}
	if err := j.writeHWM(hwm{reserved: j.last + hwmBatch, durable: j.durable}); err != nil {
		return err
	}
	st := j.statusLocked()
	fields := []zap.Field{zap.String("dir", j.dir.Path()), zap.Uint64("first_seq", st.FirstSeq),
		zap.Uint64("seq", st.LastSeq), zap.Int("segments", st.Segments),
		zap.Uint64("bytes", st.DiskBytes), zap.Int("writers", len(j.writers))}
	if st.Corruptions > 0 {
		j.log.Error("journal open after corruption: damaged bytes quarantined, every intact record kept, no seq reused",
			append(fields, zap.Int("corruptions", st.Corruptions), zap.Int64("quarantined_bytes", st.QuarantinedBytes),
				zap.Uint64("lost_seqs", st.LostSeqs))...)
		return nil
	}
	j.log.Info("journal open", fields...)
	return nil
}

func baseName(path string) string { return path[strings.LastIndexByte(path, '/')+1:] }

// gapAt is a gap frame the rewrite of a damaged segment inserts before the frame at off.
type gapAt struct {
	off      int64
	from, to uint64
}

// scan reads one segment, rebuilding its index and the writer table. next is the first
// seq of the following segment (0 for the newest); bound is a seq no entry of this
// segment can reach (next, or above the high-water mark; 0: unknown).
//
// An incomplete frame or zeros at the end of the newest segment is a torn tail: cut,
// with a WARN. Anything else that does not decode is corruption: the bytes go to a
// quarantine file, every intact frame around them is kept, the segment is rewritten
// with a gap frame where seqs are missing, and the finding is logged at ERROR and kept
// in j.damage.
func (j *Journal) scan(s *segment, next, bound uint64) error {
	return j.scanOnce(s, next, bound, false)
}

func (j *Journal) scanOnce(s *segment, next, bound uint64, rewritten bool) error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("stat segment %s: %w", s.path, err)
	}
	isLast := next == 0
	var gaps []gapAt
	expected := s.first // the seq the next entry or gap must start at
	accept := func(off int64, p []byte, resync bool) error {
		f, err := decodePayload(p)
		if err != nil {
			return fmt.Errorf("%w: %v", framing.ErrReject, err)
		}
		switch f.kind {
		case kindCheckpoint:
			if off != 0 {
				return fmt.Errorf("%w: checkpoint not at the start of the segment", framing.ErrReject)
			}
			for _, c := range f.checkpoint {
				j.noteWriter(c.writer, c.lastWriterSeq, 0)
			}
			return nil
		case kindEntry, kindGap:
			if !resync && f.seq != expected {
				return fmt.Errorf("%w: seq %d where %d was expected", framing.ErrReject, f.seq, expected)
			}
			end := f.seq
			if f.kind == kindGap {
				end = f.to
			}
			// After damage a frame must fit between what was kept and what follows:
			// with the checksum and the decode, garbage has no way in.
			if f.seq < expected || (resync && bound != 0 && end >= bound) {
				return fmt.Errorf("%w: seq %d..%d outside %d..%d", framing.ErrReject, f.seq, end, expected, bound)
			}
			if f.seq > expected {
				gaps = append(gaps, gapAt{off: off, from: expected, to: f.seq - 1})
			}
			if f.kind == kindEntry {
				s.noteEntry(f.seq, off)
				j.noteWriter(string(f.writer), f.writerSeq, 0)
			} else {
				s.last = f.to
			}
			expected = end + 1
			return nil
		}
		return fmt.Errorf("%w: unknown kind", framing.ErrReject)
	}
	damage, err := framing.Walk(s.f, fi.Size(), framing.WalkOptions{MaxPayload: MaxPayloadBytes}, accept)
	if err != nil {
		return fmt.Errorf("scan segment %s: %w", s.path, err)
	}
	s.size = fi.Size()

	var corrupt []framing.Damage
	var torn *framing.Damage
	for i, d := range damage {
		if isLast && d.AtEnd && d.Torn {
			torn = &damage[i]
			continue
		}
		corrupt = append(corrupt, d)
	}
	if torn != nil {
		j.log.Warn("cutting torn tail of the journal (a crash mid-append; nothing acknowledged is lost)",
			zap.String("segment", s.path), zap.Int64("offset", torn.Off), zap.Int64("bytes", torn.End-torn.Off),
			zap.Uint64("seq", s.last), zap.NamedError("cause", torn.Cause))
		j.found.TornBytes += torn.End - torn.Off
	}
	// An older segment must reach the next one's first seq; frames cut on a boundary
	// leave no damaged bytes, only missing seqs.
	var tailGap *gapAt
	if !isLast && expected < next {
		tailGap = &gapAt{off: -1, from: expected, to: next - 1}
	}
	if len(corrupt) == 0 && tailGap == nil {
		if torn != nil {
			if err := s.f.Truncate(torn.Off); err != nil {
				return fmt.Errorf("truncate segment %s at %d: %w", s.path, torn.Off, err)
			}
			s.size = torn.Off
		}
		return nil
	}
	if isLast && len(corrupt) > 0 && corrupt[len(corrupt)-1].AtEnd {
		// Records after the damage may have existed and been acknowledged.
		j.endsCorrupt = true
	}
	if rewritten {
		return fmt.Errorf("segment %s still damaged after its rewrite", s.path)
	}
	if err := j.repair(s, corrupt, torn, gaps, tailGap); err != nil {
		return err
	}
	// The rewritten file must read clean; scanning it again rebuilds the index.
	return j.scanOnce(s, next, bound, true)
}

// repair quarantines the corrupt ranges of s and rewrites it without them: the intact
// frames, a gap frame wherever seqs are missing, and a checkpoint if the original one
// was lost. The rewrite is a new file renamed over the old one, so a crash leaves one
// or the other; the quarantine file is durable before the rename.
func (j *Journal) repair(s *segment, corrupt []framing.Damage, torn *framing.Damage, gaps []gapAt, tailGap *gapAt) error {
	name := baseName(s.path)
	var ranges []safefile.Range
	var qbytes int64
	for _, d := range corrupt {
		ranges = append(ranges, safefile.Range{Off: d.Off, End: d.End})
		qbytes += d.End - d.Off
	}
	var qname string
	if len(ranges) > 0 {
		var err error
		if qname, err = j.dir.Quarantine(name, s.f, ranges, j.sy); err != nil {
			return err
		}
	}
	findGap := func(off int64) *gapAt {
		for i := range gaps {
			if gaps[i].off == off {
				return &gaps[i]
			}
		}
		return nil
	}
	for i, d := range corrupt {
		dm := Damage{Segment: name, Offset: d.Off, Bytes: d.End - d.Off, Quarantine: qname, Cause: d.Cause.Error()}
		if g := findGap(d.End); g != nil {
			dm.FirstLost, dm.LastLost = g.from, g.to
		}
		if i == len(corrupt)-1 && d.AtEnd && tailGap != nil {
			// The damaged end held the seqs missing before the next segment.
			dm.FirstLost, dm.LastLost = tailGap.from, tailGap.to
		}
		fields := []zap.Field{zap.String("segment", s.path), zap.Int64("offset", d.Off), zap.Int64("bytes", d.End-d.Off),
			zap.String("quarantine", qname), zap.Uint64("first_lost", dm.FirstLost), zap.Uint64("last_lost", dm.LastLost),
			zap.Bool("at_end", d.AtEnd), zap.Bool("scan_budget_exhausted", d.Exhausted), zap.NamedError("cause", d.Cause)}
		if dm.FirstLost != 0 {
			fields = append(fields, zap.Uint64("records_lost", dm.LastLost-dm.FirstLost+1))
		}
		j.log.Error("journal corrupt: damaged bytes quarantined, intact records around them kept", fields...)
		j.damage = append(j.damage, dm)
		j.found.Corruptions++
		j.found.QuarantinedBytes += d.End - d.Off
	}
	if tailGap != nil && (len(corrupt) == 0 || !corrupt[len(corrupt)-1].AtEnd) {
		n := tailGap.to - tailGap.from + 1
		j.log.Error("journal corrupt: records cut from the end of a sealed segment (on a frame boundary)",
			zap.String("segment", s.path), zap.Uint64("first_lost", tailGap.from), zap.Uint64("last_lost", tailGap.to),
			zap.Uint64("records_cut", n))
		j.damage = append(j.damage, Damage{Segment: name, Offset: -1, FirstLost: tailGap.from, LastLost: tailGap.to,
			Cause: fmt.Sprintf("records cut: %d missing before the next segment", n)})
		j.found.Corruptions++
	}

	// The rewrite: everything outside corrupt and torn, in order, with the gaps.
	end := s.size
	if torn != nil {
		end = torn.Off
	}
	tmp := name + ".tmp"
	out, err := j.dir.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		out.Close()
		_ = j.dir.Remove(tmp)
		return fmt.Errorf("rewrite segment %s: %w", s.path, err)
	}
	w := bufio.NewWriterSize(out, 64<<10)
	var lost uint64
	if len(corrupt) > 0 && corrupt[0].Off == 0 {
		// The checkpoint was in the damage; the table as recovered so far stands in.
		w.Write(encodeCheckpoint(nil, j.writers))
	}
	pos := int64(0)
	for _, d := range corrupt {
		if _, err := io.Copy(w, io.NewSectionReader(s.f, pos, d.Off-pos)); err != nil {
			return fail(err)
		}
		// A resynchronised frame whose seq jumped sits right after the damage.
		if g := findGap(d.End); g != nil {
			w.Write(encodeGap(nil, g.from, g.to))
			lost += g.to - g.from + 1
		}
		pos = d.End
	}
	if _, err := io.Copy(w, io.NewSectionReader(s.f, pos, end-pos)); err != nil {
		return fail(err)
	}
	if tailGap != nil {
		w.Write(encodeGap(nil, tailGap.from, tailGap.to))
		lost += tailGap.to - tailGap.from + 1
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := j.fsync(out); err != nil {
		return fail(err)
	}
	if err := j.dir.Rename(tmp, name); err != nil {
		return fail(err)
	}
	if err := j.syncDir(); err != nil {
		out.Close()
		return err
	}
	s.f.Close()
	j.found.LostSeqs += lost
	*s = segment{first: s.first, last: s.first - 1, f: out, path: s.path}
	return nil
}

// appendGap ends the newest segment with a gap frame from..to, so the next entry gets
// a seq above every seq a reader may ever have seen; recovery's fsync makes it durable.
func (j *Journal) appendGap(a *segment, from, to uint64) error {
	j.buf = encodeGap(j.buf[:0], from, to)
	if err := j.writeAt(a, j.buf); err != nil {
		return err
	}
	if err := j.fsync(a.f); err != nil {
		return fmt.Errorf("fsync segment %s: %w", a.path, err)
	}
	a.last = to
	j.log.Error("journal continues above its high-water mark so no seq is reused; the skipped seqs read as missed",
		zap.String("segment", a.path), zap.Uint64("first_skipped", from), zap.Uint64("last_skipped", to),
		zap.Uint64("seqs_skipped", to-from+1))
	return nil
}
