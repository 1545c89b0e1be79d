// Package lostrec is the one convention for an audit record that stands for records a
// writer lost: kind auditSpilled, no subject, decision 0, and a reason beginning
// "lost: ". oomd writes one where its spill file lost a record to corruption, and one
// for a run of writerSeqs logd no longer holds and oomd no longer has (logd lost its
// tail or was restored from a backup); logd accepts the latter across the gap. It needs
// only the generated schema, so logd does not link oomd's policy core for it
// (wire.LostRecord builds the core's form).
package lostrec

import (
	"strings"

	"oomd.dev/oomd/gen/oomdpb"
)

// Prefix begins the reason of a lost-record placeholder.
const Prefix = "lost: "

// Is reports whether rec has the shape of a lost-record placeholder.
func Is(rec oomdpb.AuditRecord) bool {
	if rec.Kind() != oomdpb.EventKind_auditSpilled || rec.Decision() != 0 {
		return false
	}
	if subject, err := rec.SubjectBytes(); err != nil || len(subject) > 0 {
		return false
	}
	reason, err := rec.Reason()
	return err == nil && strings.HasPrefix(reason, Prefix)
}
