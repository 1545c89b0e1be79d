package daemon

import "oomd.dev/oomd/services/oomd/policy"

// AuditSpilled tells the core that the audit records up to upTo (its numbering) are
// durable in the spill file: it reports auditSpilled and counts that as the ack. Give it
// to LogdAuditor.SetSpillHook.
func (d *Daemon) AuditSpilled(upTo uint64, reason string) {
	d.send(policy.Input{Kind: policy.InputAuditSpilled, Seq: upTo, Reason: reason})
}
