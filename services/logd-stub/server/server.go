package server

import (
	"context"
	"errors"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/bounds"
	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/lostrec"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/logd-stub/journal"
)

// Bounds from schema/oomd.capnp, enforced on receipt.
const (
	maxSubjectBytes  = bounds.MaxSubjectBytes
	maxReasonBytes   = bounds.MaxReasonBytes
	maxTracePosBytes = bounds.MaxTracePosBytes
	maxReadLimit     = bounds.MaxReadLimit
	// maxReadDataBytes keeps a full read page well inside rpcx.DefaultMaxMessageBytes:
	// 1024 entries of record data plus per-entry overhead and a 64-byte writer each.
	maxReadDataBytes = rpcx.DefaultMaxMessageBytes / 2
)

// Service serves one journal to any number of connections.
type Service struct {
	j   *journal.Journal
	log *zap.Logger
}

// New returns a Service over j.
func New(j *journal.Journal, log *zap.Logger) *Service {
	return &Service{j: j, log: log}
}

// Bootstrap builds the Journal capability for one accepted connection (rpcx.NewServer).
func (s *Service) Bootstrap(p rpcx.Peer) (capnp.Client, error) {
	log := s.log
	if p.Cred != nil {
		log = log.With(zap.Int32("pid", p.Cred.Pid))
	}
	js := &journalServer{j: s.j, log: log}
	return rpcx.Recovering(oomdpb.Journal_Methods(nil, js), js, log), nil
}

type journalServer struct {
	j   *journal.Journal
	log *zap.Logger
}

var _ oomdpb.Journal_Server = (*journalServer)(nil)

func (s *journalServer) Open(ctx context.Context, call oomdpb.Journal_open) error {
	writer, err := call.Args().Writer()
	if err != nil {
		return fmt.Errorf("open: read writer: %w", err)
	}
	if !journal.ValidWriter(writer) {
		return fmt.Errorf("open: writer of %d bytes: %w", len(writer), journal.ErrBadWriter)
	}
	// Fence first: no earlier Appender of this writer (a dead writer's connection with
	// a record still in flight) can append once lastWriterSeq is read below.
	epoch, err := s.j.Fence(writer)
	if err != nil {
		return fmt.Errorf("open writer %q: %w", writer, err)
	}
	// Syncing the writer's records may wait for an fsync.
	call.Go()
	// lastWriterSeq must be durable (schema): sync whatever this writer already wrote,
	// e.g. through an Appender on a connection that just dropped.
	last, err := s.j.SyncWriter(ctx, writer)
	if err != nil {
		return fmt.Errorf("open writer %q: %w", writer, err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	res.SetLastWriterSeq(last)
	a := &appender{j: s.j, writer: writer, epoch: epoch, log: s.log.With(zap.String("writer", writer))}
	if err := res.SetAppender(oomdpb.Appender(rpcx.Recovering(oomdpb.Appender_Methods(nil, a), a, a.log))); err != nil {
		return fmt.Errorf("open: set appender: %w", err)
	}
	a.log.Debug("writer opened", zap.Uint64("writer_seq", last))
	return nil
}

func (s *journalServer) Read(ctx context.Context, call oomdpb.Journal_read) error {
	args := call.Args()
	since, limit := args.SinceSeq(), args.Limit()
	if limit < 1 || limit > maxReadLimit {
		return fmt.Errorf("read: limit %d out of range 1..%d", limit, maxReadLimit)
	}
	// Reading segments is disk I/O; let other calls on this Journal proceed.
	call.Go()
	entries, next, missed, err := s.j.Read(since, int(limit), maxReadDataBytes)
	if err != nil {
		return fmt.Errorf("read since %d: %w", since, err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	list, err := res.NewEntries(int32(len(entries)))
	if err != nil {
		return fmt.Errorf("read: allocate %d entries: %w", len(entries), err)
	}
	for i, e := range entries {
		out := list.At(i)
		out.SetSeq(e.Seq)
		out.SetAppendedAtNs(e.AppendedAtNs)
		if err := out.SetWriter(e.Writer); err != nil {
			return fmt.Errorf("read: entry %d: %w", e.Seq, err)
		}
		rec, err := decodeRecord(e.Data)
		if err != nil {
			return fmt.Errorf("read: entry %d: %w", e.Seq, err)
		}
		if err := out.SetRecord(rec); err != nil {
			return fmt.Errorf("read: entry %d: copy record: %w", e.Seq, err)
		}
	}
	res.SetNextSeq(next)
	res.SetMissed(missed)
	return nil
}

func (s *journalServer) Status(ctx context.Context, call oomdpb.Journal_status) error {
	st := s.j.Status()
	res, err := call.AllocResults()
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	res.SetFirstSeq(st.FirstSeq)
	res.SetLastSeq(st.LastSeq)
	res.SetDurableSeq(st.DurableSeq)
	res.SetDiskBytes(st.DiskBytes)
	return nil
}

// appender is one writer's Appender. Its fields are touched only before call.Go(), when
// go-capnp runs this object's calls one at a time in arrival order.
type appender struct {
	j      *journal.Journal
	writer string
	epoch  uint64 // from journal.Fence at open; a later open of the writer fences this one
	log    *zap.Logger
	// broken is set by the first rejected append: later records of this stream would
	// all be gaps, so the Appender refuses everything until the writer opens again.
	broken error
}

var _ oomdpb.Appender_Server = (*appender)(nil)

// Append does not call call.Go(): records must be checked against the writer's
// sequence in arrival order, and it blocks only on the local disk (a write, and an
// fsync when the segment rotates), never on a peer.
func (a *appender) Append(ctx context.Context, call oomdpb.Appender_append) error {
	if a.broken != nil {
		return a.broken
	}
	if err := a.append(call.Args()); err != nil {
		a.broken = err
		a.log.Warn("append rejected; appender closed until the writer opens again", zap.Error(err))
		return err
	}
	return nil
}

func (a *appender) append(args oomdpb.Appender_append_Params) error {
	if !args.HasRecord() {
		return errors.New("append: record is missing")
	}
	rec, err := args.Record()
	if err != nil {
		return fmt.Errorf("append: read record: %w", err)
	}
	if err := checkRecord(rec); err != nil {
		return fmt.Errorf("append writerSeq %d: %w", rec.WriterSeq(), err)
	}
	data, err := capnp.Canonicalize(capnp.Struct(rec))
	if err != nil {
		return fmt.Errorf("append writerSeq %d: encode: %w", rec.WriterSeq(), err)
	}
	seq, err := a.j.AppendFenced(a.writer, a.epoch, rec.WriterSeq(), data, false)
	var gap *journal.GapError
	if errors.As(err, &gap) && lostrec.Is(rec) {
		// The writer declares gap.Expected..writerSeq lost (package lostrec): this is how
		// a writer and a journal that lost its tail, or was restored from a backup,
		// reconcile once instead of failing every append for ever.
		seq, err = a.j.AppendFenced(a.writer, a.epoch, rec.WriterSeq(), data, true)
		if err == nil {
			reason, _ := rec.Reason()
			a.log.Error("writer declared records lost that the journal does not hold; its sequence continues after them",
				zap.Uint64("first_lost", gap.Expected), zap.Uint64("last_lost", rec.WriterSeq()),
				zap.Uint64("seq", seq), zap.String("reason", reason))
			return nil
		}
	}
	if errors.Is(err, journal.ErrDuplicate) {
		a.log.Debug("duplicate record dropped", zap.Uint64("writer_seq", rec.WriterSeq()))
		return nil
	}
	if err != nil {
		return fmt.Errorf("append: %w", err)
	}
	a.log.Debug("appended", zap.Uint64("seq", seq), zap.Uint64("writer_seq", rec.WriterSeq()), zap.Int("bytes", len(data)))
	return nil
}

func (a *appender) Sync(ctx context.Context, call oomdpb.Appender_sync) error {
	if a.broken != nil {
		return fmt.Errorf("sync: %w", a.broken)
	}
	if a.j.Fenced(a.writer, a.epoch) {
		// Its durableWriterSeq would count the new opener's records.
		a.broken = fmt.Errorf("writer %q: %w", a.writer, journal.ErrFenced)
		return fmt.Errorf("sync: %w", a.broken)
	}
	upTo := call.Args().UpTo()
	if last := a.j.LastWriterSeq(a.writer); upTo > last {
		return fmt.Errorf("sync upTo %d: writer %q has appended only up to writerSeq %d", upTo, a.writer, last)
	}
	// Waiting for the fsync must not hold up this writer's next appends.
	call.Go()
	durable, err := a.j.SyncWriter(ctx, a.writer)
	if err != nil {
		return fmt.Errorf("sync upTo %d: %w", upTo, err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	res.SetDurableWriterSeq(durable)
	return nil
}

// checkRecord enforces the AuditRecord bounds of schema/oomd.capnp. Unknown kinds pass:
// a newer writer may add enumerants.
func checkRecord(rec oomdpb.AuditRecord) error {
	if rec.WriterSeq() == 0 {
		return errors.New("writerSeq must be at least 1")
	}
	subject, err := rec.SubjectBytes()
	if err != nil {
		return fmt.Errorf("read subject: %w", err)
	}
	if len(subject) > maxSubjectBytes {
		return fmt.Errorf("subject is %d bytes, at most %d", len(subject), maxSubjectBytes)
	}
	reason, err := rec.ReasonBytes()
	if err != nil {
		return fmt.Errorf("read reason: %w", err)
	}
	if len(reason) > maxReasonBytes {
		return fmt.Errorf("reason is %d bytes, at most %d", len(reason), maxReasonBytes)
	}
	pos, err := rec.TracePosBytes()
	if err != nil {
		return fmt.Errorf("read tracePos: %w", err)
	}
	if len(pos) > maxTracePosBytes {
		return fmt.Errorf("tracePos is %d bytes, at most %d", len(pos), maxTracePosBytes)
	}
	return nil
}

// decodeRecord reads an AuditRecord stored by capnp.Canonicalize: one segment without
// a segment table.
func decodeRecord(data []byte) (oomdpb.AuditRecord, error) {
	msg, _, err := capnp.NewMessage(capnp.SingleSegment(data))
	if err != nil {
		return oomdpb.AuditRecord{}, fmt.Errorf("decode record: %w", err)
	}
	rec, err := oomdpb.ReadRootAuditRecord(msg)
	if err != nil {
		return oomdpb.AuditRecord{}, fmt.Errorf("decode record: %w", err)
	}
	return rec, nil
}
