package server

import (
	"context"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/logd-stub/journal"
)

// DamageWriter is the writer name of the records logd writes about its own journal.
const DamageWriter = "logd"

// CorruptKind is the kind of a "corrupt" record. schema/oomd.capnp has no enumerant for
// it yet, so it is a value outside EventKind (readers that decode the enum show it as
// unknown); the writer DamageWriter and the reason's "corrupt:" prefix identify it.
const CorruptKind = oomdpb.EventKind(0xffff)

// RecordDamage writes one "corrupt" record per finding of the journal's recovery into
// the journal itself, as writer DamageWriter, and makes them durable: the status call
// of the schema has no field for it, and a record is what an auditor reading the
// journal will see. Returns how many were written.
func RecordDamage(ctx context.Context, j *journal.Journal, log *zap.Logger) (int, error) {
	damage := j.Damage()
	if len(damage) == 0 {
		return 0, nil
	}
	ws := j.LastWriterSeq(DamageWriter)
	var seq uint64
	for _, d := range damage {
		data, err := corruptRecord(ws+1, d)
		if err != nil {
			return 0, err
		}
		if seq, err = j.Append(DamageWriter, ws+1, data); err != nil {
			return 0, fmt.Errorf("append corrupt record: %w", err)
		}
		ws++
		log.Error("journal damage recorded in the journal", zap.Uint64("seq", seq), zap.String("segment", d.Segment),
			zap.Int64("offset", d.Offset), zap.Int64("bytes", d.Bytes), zap.String("quarantine", d.Quarantine),
			zap.Uint64("first_lost", d.FirstLost), zap.Uint64("last_lost", d.LastLost))
	}
	if err := j.Sync(ctx, seq); err != nil {
		return 0, fmt.Errorf("sync corrupt records: %w", err)
	}
	return len(damage), nil
}

func corruptRecord(writerSeq uint64, d journal.Damage) ([]byte, error) {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, err
	}
	rec, err := oomdpb.NewRootAuditRecord(seg)
	if err != nil {
		return nil, err
	}
	rec.SetWriterSeq(writerSeq)
	rec.SetKind(CorruptKind)
	rec.SetBytes(uint64(max(d.Bytes, 0)))
	reason := fmt.Sprintf("corrupt: segment=%s offset=%d bytes=%d lost=%d..%d quarantine=%s cause=%s",
		d.Segment, d.Offset, d.Bytes, d.FirstLost, d.LastLost, d.Quarantine, d.Cause)
	if len(reason) > maxReasonBytes {
		reason = reason[:maxReasonBytes]
	}
	if err := rec.SetSubject("journal"); err != nil {
		return nil, err
	}
	if err := rec.SetReason(reason); err != nil {
		return nil, err
	}
	return capnp.Canonicalize(capnp.Struct(rec))
}
