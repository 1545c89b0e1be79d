package daemon

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"slices"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/procstat"
	"oomd.dev/oomd/services/oomd/policy"
)

// ExecdRun identifies the run of execd that started this oomd: a hash of the kernel's
// boot id and oomd's parent's pid and start time (execd is always oomd's parent).
// Instance numbers restart with execd, so a durable decision about "hog instance 1" is
// about the current hog#1 only if it was recorded under the same run (records carry it
// as AuditRecord.execdRun). Never 0.
func ExecdRun() (uint64, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return 0, fmt.Errorf("execd run: %w", err)
	}
	ppid := os.Getppid()
	start, err := procStartTime(ppid)
	if err != nil {
		return 0, fmt.Errorf("execd run: parent %d: %w", ppid, err)
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d/%d", bytes.TrimSpace(boot), ppid, start)
	return max(h.Sum64(), 1), nil
}

// procStartTime is when pid started (clock ticks after boot).
func procStartTime(pid int) (uint64, error) {
	st, err := procstat.Read(pid)
	if err != nil {
		return 0, err
	}
	return st.Uint(procstat.FieldStartTime)
}

// Recovered is what the durable audit trail of earlier oomd runs says a new run
// continues from (policy.Config.DecisionBase and Durable).
type Recovered struct {
	DecisionBase uint64
	// Durable: decisions of the current execd run whose killDecided record is durable
	// and whose end (killed, killRefused, killDenied, or ended unsent) is not.
	Durable []policy.DurableDecision
	Records int    // oomd records read (journal and spill, duplicates once)
	Source  string // where they were read from, for the log
}

// decisionScan folds oomd's audit records, oldest first, into a Recovered.
type decisionScan struct {
	run     uint64
	base    uint64
	open    map[uint64]policy.DurableDecision // by decision id; lookup and delete only
	records int
}

func newDecisionScan(run uint64) *decisionScan {
	return &decisionScan{run: run, open: make(map[uint64]policy.DurableDecision)}
}

func (s *decisionScan) add(r policy.AuditRecord, run uint64) {
	s.records++
	if r.Decision == 0 {
		return
	}
	s.base = max(s.base, r.Decision)
	switch r.Kind {
	case policy.EventKillDecided:
		// A damaged subject would make the core refuse the whole list: skip it.
		if run == s.run && s.run != 0 && policy.ValidateSubjectID(r.Subject) == nil {
			s.open[r.Decision] = policy.DurableDecision{ID: r.Decision, Subject: r.Subject, Instance: r.Instance, Bytes: r.Bytes, Limit: r.Limit}
		}
	case policy.EventKilled, policy.EventKillRefused, policy.EventKillDenied, policy.EventSubjectExited, policy.EventWouldKill:
		delete(s.open, r.Decision)
	}
}

// result returns the open decisions in id order, at most policy.MaxSubjects (the
// newest: an older one still open would be about an instance long gone).
func (s *decisionScan) result(source string) Recovered {
	ds := make([]policy.DurableDecision, 0, len(s.open))
	for _, d := range s.open {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b policy.DurableDecision) int { return cmp.Compare(a.ID, b.ID) })
	if len(ds) > policy.MaxSubjects {
		ds = ds[len(ds)-policy.MaxSubjects:]
	}
	return Recovered{DecisionBase: s.base, Durable: ds, Records: s.records, Source: source}
}

// RecoverDecisions reads back this writer's durable records — the journal through the
// connection Open made, then the spill file's records logd does not have yet — and
// returns the decision ids to continue above and the decisions of the current execd
// run (run) still open. Call it after Open and before Start. Without a logd
// connection only the spill file is read, and the result says so: decisions made
// durable in logd alone may then be made again.
//
// Open fenced every earlier Appender of this writer (logd's open), so no record of a
// dead predecessor can land after this read.
func (a *LogdAuditor) RecoverDecisions(ctx context.Context, run uint64) (Recovered, error) {
	scan := newDecisionScan(run)
	var journalLast uint64
	source := "nothing from logd (unreachable at start)"
	if j, ok := a.Journal(); ok {
		defer j.Release()
		last, err := readWriterRecords(ctx, j, WriterName, scan)
		if err != nil {
			return Recovered{}, fmt.Errorf("read back the journal: %w", err)
		}
		journalLast, source = last, "logd journal"
	}
	if a.spill != nil {
		n := 0
		for _, r := range a.spill.Records() {
			if r.JournalSeq > journalLast {
				scan.add(r.Rec, r.ExecdRun)
				n++
			}
		}
		if n > 0 {
			source += fmt.Sprintf(" and %d spilled records", n)
		}
	}
	rec := scan.result(source)
	a.log.Info("read back durable decisions", zap.String("from", source), zap.Int("records", rec.Records),
		zap.Uint64("decisionBase", rec.DecisionBase), zap.Int("open", len(rec.Durable)))
	return rec, nil
}

// readWriterRecords feeds scan every journal record of writer, oldest first, and
// returns the highest writerSeq seen.
func readWriterRecords(ctx context.Context, j oomdpb.Journal, writer string, scan *decisionScan) (uint64, error) {
	var since, last uint64
	for {
		f, rel := j.Read(ctx, func(p oomdpb.Journal_read_Params) error {
			p.SetSinceSeq(since)
			p.SetLimit(1024)
			return nil
		})
		res, err := f.Struct()
		if err != nil {
			rel()
			return 0, err
		}
		entries, err := res.Entries()
		if err != nil {
			rel()
			return 0, err
		}
		for i := 0; i < entries.Len(); i++ {
			e := entries.At(i)
			if w, _ := e.Writer(); w != writer {
				continue
			}
			r, err := e.Record()
			if err != nil {
				rel()
				return 0, fmt.Errorf("entry %d: %w", e.Seq(), err)
			}
			subject, _ := r.Subject()
			scan.add(policy.AuditRecord{WriterSeq: r.WriterSeq(), Kind: policy.EventKind(r.Kind()), Subject: subject,
				Instance: r.Instance(), Bytes: r.Bytes(), Limit: r.Limit(), Decision: r.Decision()}, r.ExecdRun())
			last = max(last, r.WriterSeq())
		}
		next := res.NextSeq()
		rel()
		if entries.Len() == 0 || next <= since {
			return last, nil
		}
		since = next
	}
}
