package wire

import (
	"fmt"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

// Status is oomd's answer to Control.status (schema Status), field for field. Enumerants
// keep their schema types: a reader passes on one it does not know (a newer oomd's) for
// the caller to show as such, rather than reading it as some known value.
type Status struct {
	Tick              uint64
	PolicyVersion     uint64
	LastEventSeq      uint64
	Subjects          []SubjectStatus // sorted by subject id; at most 1024 (see Truncated)
	Truncated         bool
	Kills             uint64
	Denied            uint64
	Throttled         uint64
	RejectedSamples   uint64
	AcceptedSamples   uint64
	Level             oomdpb.PressureLevel
	MemAvailableBytes uint64
	HaltClaimed       bool
	InjectEnabled     bool
	// The pressure victim the core would pick now, the reason a decision would carry, and
	// what holds it back; all empty when no subject is a candidate.
	Victim       string
	VictimReason string
	VictimHold   string
	// This oomd run: its events have seqs above EventSeqBase, its ticks count from 0 at
	// StartedAtNs (wall clock, Unix ns).
	EventSeqBase uint64
	StartedAtNs  int64
	// The audit trail: records not yet durable, logd not connected, records spilled.
	AuditWaiting  uint64
	AuditLogdDown bool
	AuditSpilled  uint64
}

// SubjectStatus is one subject of a Status (schema SubjectStatus).
type SubjectStatus struct {
	Subject          string
	Instance         uint64
	Bytes            uint64 // the enforced reading (see Signal)
	SoftBytes        uint64
	HardBytes        uint64
	State            oomdpb.SubjectState
	Critical         bool
	Rejected         uint64
	KernelBytes      uint64
	CooperativeBytes uint64
	Signal           oomdpb.Signal
	CgroupMode       oomdpb.CgroupMode // how the shell contains it; the core does not know
	Published        bool
}

// SubjectStatusOf is the core's snapshot of a subject as sent, with how the shell
// contains it.
func SubjectStatusOf(s policy.SubjectStatus, mode oomdpb.CgroupMode) SubjectStatus {
	return SubjectStatus{
		Subject: s.Subject, Instance: s.Instance, Bytes: s.Bytes, SoftBytes: s.SoftBytes, HardBytes: s.HardBytes,
		State: oomdpb.SubjectState(s.State), Critical: s.Critical, Rejected: s.Rejected,
		KernelBytes: s.Kernel, CooperativeBytes: s.Cooperative, Signal: oomdpb.Signal(s.Signal),
		CgroupMode: mode, Published: s.Published,
	}
}

// SetStatus writes s into dst.
func SetStatus(dst oomdpb.Status, s Status) error {
	dst.SetTick(s.Tick)
	dst.SetPolicyVersion(s.PolicyVersion)
	dst.SetLastEventSeq(s.LastEventSeq)
	dst.SetTruncated(s.Truncated)
	dst.SetKills(s.Kills)
	dst.SetDenied(s.Denied)
	dst.SetThrottled(s.Throttled)
	dst.SetRejectedSamples(s.RejectedSamples)
	dst.SetAcceptedSamples(s.AcceptedSamples)
	dst.SetLevel(s.Level)
	dst.SetMemAvailableBytes(s.MemAvailableBytes)
	dst.SetHaltClaimed(s.HaltClaimed)
	dst.SetInjectEnabled(s.InjectEnabled)
	dst.SetEventSeqBase(s.EventSeqBase)
	dst.SetStartedAtNs(s.StartedAtNs)
	dst.SetAuditWaiting(s.AuditWaiting)
	dst.SetAuditLogdDown(s.AuditLogdDown)
	dst.SetAuditSpilled(s.AuditSpilled)
	if err := dst.SetVictim(s.Victim); err != nil {
		return fmt.Errorf("status.victim: %w", err)
	}
	if err := dst.SetVictimReason(s.VictimReason); err != nil {
		return fmt.Errorf("status.victimReason: %w", err)
	}
	if err := dst.SetVictimHold(s.VictimHold); err != nil {
		return fmt.Errorf("status.victimHold: %w", err)
	}
	l, err := dst.NewSubjects(int32(len(s.Subjects)))
	if err != nil {
		return fmt.Errorf("status.subjects: %w", err)
	}
	for i, ss := range s.Subjects {
		e := l.At(i)
		if err := e.SetSubject(ss.Subject); err != nil {
			return fmt.Errorf("status.subjects[%d].subject: %w", i, err)
		}
		e.SetInstance(ss.Instance)
		e.SetBytes(ss.Bytes)
		e.SetSoftBytes(ss.SoftBytes)
		e.SetHardBytes(ss.HardBytes)
		e.SetState(ss.State)
		e.SetCritical(ss.Critical)
		e.SetRejected(ss.Rejected)
		e.SetKernelBytes(ss.KernelBytes)
		e.SetCooperativeBytes(ss.CooperativeBytes)
		e.SetSignal(ss.Signal)
		e.SetCgroupMode(ss.CgroupMode)
		e.SetPublished(ss.Published)
	}
	return nil
}

// ReadStatus reads a status from the wire.
func ReadStatus(src oomdpb.Status) (Status, error) {
	s := Status{
		Tick: src.Tick(), PolicyVersion: src.PolicyVersion(), LastEventSeq: src.LastEventSeq(),
		Truncated: src.Truncated(), Kills: src.Kills(), Denied: src.Denied(), Throttled: src.Throttled(),
		RejectedSamples: src.RejectedSamples(), AcceptedSamples: src.AcceptedSamples(),
		Level: src.Level(), MemAvailableBytes: src.MemAvailableBytes(),
		HaltClaimed: src.HaltClaimed(), InjectEnabled: src.InjectEnabled(),
		EventSeqBase: src.EventSeqBase(), StartedAtNs: src.StartedAtNs(),
		AuditWaiting: src.AuditWaiting(), AuditLogdDown: src.AuditLogdDown(), AuditSpilled: src.AuditSpilled(),
	}
	var err error
	if s.Victim, err = src.Victim(); err != nil {
		return s, fmt.Errorf("status.victim: %w", err)
	}
	if s.VictimReason, err = src.VictimReason(); err != nil {
		return s, fmt.Errorf("status.victimReason: %w", err)
	}
	if s.VictimHold, err = src.VictimHold(); err != nil {
		return s, fmt.Errorf("status.victimHold: %w", err)
	}
	l, err := src.Subjects()
	if err != nil {
		return s, fmt.Errorf("status.subjects: %w", err)
	}
	for i := 0; i < l.Len(); i++ {
		e := l.At(i)
		id, err := e.Subject()
		if err != nil {
			return s, fmt.Errorf("status.subjects[%d].subject: %w", i, err)
		}
		s.Subjects = append(s.Subjects, SubjectStatus{
			Subject: id, Instance: e.Instance(), Bytes: e.Bytes(), SoftBytes: e.SoftBytes(), HardBytes: e.HardBytes(),
			State: e.State(), Critical: e.Critical(), Rejected: e.Rejected(),
			KernelBytes: e.KernelBytes(), CooperativeBytes: e.CooperativeBytes(),
			Signal: e.Signal(), CgroupMode: e.CgroupMode(), Published: e.Published(),
		})
	}
	return s, nil
}

// RebootRecord is the record of the previous boot's reboot that oomd read at start
// (schema RebootRecord). The zero value is "none": Valid false, Reason unknown.
type RebootRecord struct {
	Valid      bool // false: no record, or torn/corrupt (Reason is then unknown)
	Reason     oomdpb.RebootReason
	Graceful   bool
	TeardownMs uint32
	NotStopped []string
	BootCount  uint64 // which boot wrote it
}

// SetRebootRecord writes r into dst.
func SetRebootRecord(dst oomdpb.RebootRecord, r RebootRecord) error {
	dst.SetValid(r.Valid)
	dst.SetReason(r.Reason)
	dst.SetGraceful(r.Graceful)
	dst.SetTeardownMs(r.TeardownMs)
	dst.SetBootCount(r.BootCount)
	return setTextList("rebootRecord.notStopped", dst.NewNotStopped, r.NotStopped)
}

// ReadRebootRecord reads a reboot record from the wire.
func ReadRebootRecord(src oomdpb.RebootRecord) (RebootRecord, error) {
	r := RebootRecord{Valid: src.Valid(), Reason: src.Reason(), Graceful: src.Graceful(),
		TeardownMs: src.TeardownMs(), BootCount: src.BootCount()}
	var err error
	r.NotStopped, err = textList("rebootRecord.notStopped", src.NotStopped)
	return r, err
}

// JournalEntry is one entry of logd's journal (schema JournalEntry) as oomd's
// Control.audit passes it on. The record's execdRun is not read (AuditRecord).
type JournalEntry struct {
	Seq          uint64 // logd's journal sequence
	Writer       string
	Record       policy.AuditRecord
	AppendedAtNs int64 // logd's wall clock at append (Unix ns; 0 = unknown)
}

// SetJournalEntry writes e into dst, the record with execdRun 0 (unknown). oomd itself
// passes logd's entries on as they are; this is for peers that make entries up.
func SetJournalEntry(dst oomdpb.JournalEntry, e JournalEntry) error {
	dst.SetSeq(e.Seq)
	dst.SetAppendedAtNs(e.AppendedAtNs)
	if err := dst.SetWriter(e.Writer); err != nil {
		return fmt.Errorf("entry.writer: %w", err)
	}
	rec, err := dst.NewRecord()
	if err != nil {
		return fmt.Errorf("entry.record: %w", err)
	}
	return SetAuditRecord(rec, e.Record, e.Record.WriterSeq, 0)
}

// ReadJournalEntries reads a list of journal entries.
func ReadJournalEntries(l oomdpb.JournalEntry_List) ([]JournalEntry, error) {
	out := make([]JournalEntry, 0, l.Len())
	for i := 0; i < l.Len(); i++ {
		e := l.At(i)
		writer, err := e.Writer()
		if err != nil {
			return nil, fmt.Errorf("entries[%d].writer: %w", i, err)
		}
		src, err := e.Record()
		if err != nil {
			return nil, fmt.Errorf("entries[%d].record: %w", i, err)
		}
		r, err := AuditRecord(src)
		if err != nil {
			return nil, fmt.Errorf("entries[%d]: %w", i, err)
		}
		out = append(out, JournalEntry{Seq: e.Seq(), Writer: writer, Record: r, AppendedAtNs: e.AppendedAtNs()})
	}
	return out, nil
}
