package wire

import (
	"oomd.dev/oomd/internal/lostrec"
	"oomd.dev/oomd/services/oomd/policy"
)

// LostRecord is the placeholder (package lostrec) a writer puts where its own audit
// records were lost, so its writerSeq stays gap-free and the journal says what was lost:
// kind auditSpilled, no subject, no decision, reason "lost: <why>" (cut to
// MaxReasonBytes).
//
// oomd's spill recovery writes one per record lost to spill corruption. oomd's auditor
// writes one for a run of writerSeqs logd no longer holds and oomd no longer has:
// numbered with the last lost writerSeq, it stands for the whole run, and logd accepts
// it across the gap.
func LostRecord(writerSeq uint64, why string) policy.AuditRecord {
	reason := lostrec.Prefix + why
	if len(reason) > MaxReasonBytes {
		reason = reason[:MaxReasonBytes]
	}
	return policy.AuditRecord{WriterSeq: writerSeq, Kind: policy.EventAuditSpilled, Reason: reason}
}
