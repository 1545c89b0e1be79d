package daemon

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// WriterName is how oomd names itself to logd.
const WriterName = "oomd"

// DefaultAuditSyncTimeout is how long, with a spill file, oomd lets logd take to make a
// batch of audit records durable before it writes them to the spill file instead
// (--audit-sync-timeout). logd's fsync of a few records takes single-digit
// milliseconds here; 200 ms is far above that yet adds at most 200 ms to a kill when
// logd hangs (the kill path's budget is one sample period + 20 ms in the normal case).
const DefaultAuditSyncTimeout = 200 * time.Millisecond

const (
	// DefaultLogdStartWait bounds the wait for logd at start when there is no spilled
	// record to continue from (the writer position is then only known to logd), and so
	// the read-back of earlier decisions (RecoverDecisions); past it oomd watches without
	// logd (--logd-start-wait).
	DefaultLogdStartWait = 10 * time.Second
	// dialTimeout bounds one connect + open (a frozen logd accepts but never answers).
	dialTimeout = 2 * time.Second
	// replayChunk records are replayed per sync, so a record produced meanwhile waits
	// for at most one chunk (itself bounded by the sync timeout).
	replayChunk = 64
)

// LogdAuditor makes the core's audit records durable. A record counts only when logd's
// sync returned past it (fsync'ed) or, with a spill file (UseSpill), when it was
// fsync'ed into the spill; only then is the core told, so no terminate request can
// overtake its audit record (security invariant 3).
//
// The core numbers records from 1 in every oomd run; logd's per-writer sequence
// survives restarts. The auditor maps one onto the other with an offset (base): logd's
// lastWriterSeq when this run first opened the journal, or the last spilled record's
// journal seq when the run started with a non-empty spill file (which then holds the
// newest records this writer ever produced: once a record is spilled, every later one
// is too, until logd has them all and the spill is emptied).
//
// With a spill file, audit never waits for logd beyond the sync timeout: when logd is
// unreachable, or does not acknowledge a batch within it, the pending records go to the
// spill file and are acknowledged from there (InputAuditSpilled, through the spill
// hook). While the spill holds records, new ones are appended to it too, so logd
// receives every record in writerSeq order. When logd is reachable the spill is
// replayed in chunks (logd drops as duplicates what it already has), and emptied once
// logd acknowledged its last record. Records produced meanwhile go first. Without a
// spill file, records wait for logd however long it takes.
type LogdAuditor struct {
	path string
	log  *zap.Logger

	execdRun    uint64        // stamped on every record (AuditRecord.execdRun); set before Start
	startWait   time.Duration // SetStartWait; DefaultLogdStartWait
	spill       *Spill        // nil: no spill file
	syncTimeout time.Duration
	onSpill     func(upTo uint64, reason string)

	mu      sync.Mutex
	pending []policy.AuditRecord // submitted, not yet durable, in WriterSeq order
	wake    chan struct{}
	journal oomdpb.Journal // current connection's journal; zero when disconnected
	base    uint64
	opened  bool

	started bool         // Open succeeded (caller's goroutine only, before Start)
	running bool         // Start started run (which releases everything when ctx ends)
	initial *logdSession // the session Open made, handed to run by Start; nil: none

	spillFailures atomic.Uint64 // batches the spill refused (full) or failed to write
}

// NewLogdAuditor returns an auditor for the logd socket at path.
func NewLogdAuditor(path string, log *zap.Logger) *LogdAuditor {
	return &LogdAuditor{path: path, log: log.Named("audit"), wake: make(chan struct{}, 1),
		syncTimeout: DefaultAuditSyncTimeout, startWait: DefaultLogdStartWait}
}

// SetStartWait sets how long Open waits for logd when there is no spill to continue
// from (0 = DefaultLogdStartWait). Call it before Open.
func (a *LogdAuditor) SetStartWait(d time.Duration) {
	if d > 0 {
		a.startWait = d
	}
}

// UseSpill gives the auditor a spill file and the bound on logd's sync (0 = the
// default). Call it before Start.
func (a *LogdAuditor) UseSpill(s *Spill, syncTimeout time.Duration) {
	a.spill = s
	if syncTimeout > 0 {
		a.syncTimeout = syncTimeout
	}
}

// SetExecdRun sets the execd run stamped on every record this auditor writes (see
// ExecdRun). Call it before Start.
func (a *LogdAuditor) SetExecdRun(run uint64) { a.execdRun = run }

// SetSpillHook sets what is called, instead of the ack callback, when records up to
// upTo (core numbering) were made durable in the spill file; the daemon steps
// InputAuditSpilled with it. Without a hook the ack callback is called.
func (a *LogdAuditor) SetSpillHook(f func(upTo uint64, reason string)) { a.onSpill = f }

// Submit queues records; they are sent in order by the auditor's goroutine.
func (a *LogdAuditor) Submit(recs []policy.AuditRecord) {
	a.mu.Lock()
	a.pending = append(a.pending, recs...)
	a.mu.Unlock()
	a.nudge()
}

func (a *LogdAuditor) nudge() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// State reports whether logd is connected now and how many records the spill file holds
// (status; the audit trail's health for people).
func (a *LogdAuditor) State() (logdConnected bool, spilled int) {
	a.mu.Lock()
	logdConnected = a.journal.IsValid()
	a.mu.Unlock()
	if a.spill != nil {
		spilled = a.spill.Len()
	}
	return logdConnected, spilled
}

// Journal returns a reference to logd's journal for reads, if connected.
func (a *LogdAuditor) Journal() (oomdpb.Journal, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.journal.IsValid() {
		return oomdpb.Journal{}, false
	}
	return a.journal.AddRef(), true
}

// Open finds where this writer's sequence stands. With spilled records from an earlier
// run it continues from them, trying logd once (dialTimeout) so that RecoverDecisions
// can read the journal, and leaves connecting (and replaying) to the background if
// logd does not answer; otherwise it waits up to the start wait for logd, which alone
// knows where the sequence stands, and then goes on without it (records wait). It
// fails only when ctx ends. Start calls it if the caller did not.
func (a *LogdAuditor) Open(ctx context.Context) error {
	if a.started {
		return nil
	}
	if a.spill != nil {
		if last, ok := a.spill.Last(); ok {
			a.mu.Lock()
			a.base, a.opened = last, true
			a.mu.Unlock()
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			s, err := a.connect(dctx)
			cancel()
			if err != nil {
				a.log.Warn("logd unreachable at start", zap.Error(err))
			}
			a.initial, a.started = s, true
			a.log.Info("continuing from the spill file; logd gets it when reachable", zap.Uint64("base", last),
				zap.Int("spilled", a.spill.Len()), zap.Bool("logdConnected", s != nil))
			return nil
		}
	}
	sctx, cancel := context.WithTimeout(ctx, a.startWait)
	defer cancel()
	for backoff := 10 * time.Millisecond; ; backoff = min(backoff*2, time.Second) {
		s, err := a.connect(sctx)
		if err == nil {
			a.initial, a.started = s, true
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sctx.Done():
			// The watchdog comes up anyway: it watches, denies and reports; its records
			// (and so its kills) wait in memory until logd is reachable, and the
			// sequence continues from logd's lastWriterSeq then (connect).
			a.started = true
			a.log.Error("logd unreachable at start and no spill file: audit records, and the kills they gate, wait for logd",
				zap.String("socket", a.path), zap.Duration("waited", a.startWait), zap.Error(err))
			return nil
		case <-time.After(backoff):
		}
	}
}

// Start opens (Open) if that was not done, then keeps the connection, reconnecting with
// backoff when logd goes away.
func (a *LogdAuditor) Start(ctx context.Context, ack func(upTo uint64)) error {
	if err := a.Open(ctx); err != nil {
		return err
	}
	s := a.initial
	a.initial, a.running = nil, true
	go a.run(ctx, s, ack)
	return nil
}

// Close releases what Open holds (its first session, the journal reference) when the
// auditor was not started, e.g. a start that failed after Open. A started auditor
// releases them itself when Start's ctx ends; Close then does nothing.
func (a *LogdAuditor) Close() {
	if a.running {
		return
	}
	if a.initial != nil {
		go a.initial.close() // may wait on a frozen peer (docs/capnp-traps.md, trap 2)
		a.initial = nil
	}
	a.forgetJournal()
}

type logdSession struct {
	conn     *rpc.Conn
	appender oomdpb.Appender
	last     uint64 // logd's lastWriterSeq at open
	sent     uint64 // highest journal writerSeq sent on this session
	durable  uint64 // highest journal writerSeq logd acknowledged on this session
	log      *zap.Logger
}

func (s *logdSession) close() {
	s.appender.Release()
	s.conn.Close()
}

func (a *LogdAuditor) connect(ctx context.Context) (*logdSession, error) {
	conn, client, err := rpcx.Dial(ctx, a.path, a.log)
	if err != nil {
		return nil, err
	}
	journal := oomdpb.Journal(client)
	f, rel := journal.Open(ctx, func(p oomdpb.Journal_open_Params) error { return p.SetWriter(WriterName) })
	defer rel()
	res, err := f.Struct()
	if err != nil {
		journal.Release()
		go conn.Close() // may wait on a frozen peer (docs/capnp-traps.md, trap 2)
		return nil, fmt.Errorf("open journal: %w", err)
	}
	last := res.LastWriterSeq()
	s := &logdSession{conn: conn, appender: res.Appender().AddRef(), last: last, sent: last, durable: last, log: a.log}
	// The limiter must sit on the reference we call through (docs/capnp-traps.md, trap 4).
	s.appender.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))
	a.mu.Lock()
	if !a.opened {
		a.base, a.opened = s.last, true
	}
	base := a.base
	if a.journal.IsValid() {
		a.journal.Release()
	}
	a.journal = journal
	a.mu.Unlock()
	if a.spill != nil {
		if sl, ok := a.spill.Last(); ok && last > sl {
			// Cannot happen while logd keeps what it acknowledged: every record after the
			// first spilled one was spilled. Our next records would be dropped as
			// duplicates, so say it loudly.
			a.log.Error("logd holds records of ours beyond the spill file", zap.Uint64("lastWriterSeq", last),
				zap.Uint64("spillLast", sl), zap.Uint64("base", base))
		}
	}
	a.log.Info("connected to logd", zap.String("socket", a.path), zap.Uint64("lastWriterSeq", last))
	return s, nil
}

// run is the auditor's only goroutine touching sessions and the spill file. It does
// what its state calls for (auditLoop.step) until nothing can be done, then waits for
// something to change: a record, a dial's result, a retry, the session's end.
func (a *LogdAuditor) run(ctx context.Context, s *logdSession, ack func(uint64)) {
	l := newAuditLoop(a, s, ack)
	defer a.forgetJournal() // the journal reference of the last session
	defer l.close()
	for ctx.Err() == nil {
		if l.step(ctx) {
			continue
		}
		if !l.wait(ctx) {
			return
		}
	}
}

// forgetJournal drops the reference to a lost session's journal (Journal, State).
func (a *LogdAuditor) forgetJournal() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.journal.IsValid() {
		a.journal.Release()
		a.journal = oomdpb.Journal{}
	}
}

// snapshot returns a copy of the pending records.
func (a *LogdAuditor) snapshot() []policy.AuditRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]policy.AuditRecord(nil), a.pending...)
}

// done drops pending records up to coreSeq.
func (a *LogdAuditor) done(coreSeq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := 0
	for i < len(a.pending) && a.pending[i].WriterSeq <= coreSeq {
		i++
	}
	a.pending = append(a.pending[:0], a.pending[i:]...)
}

// spillRecords makes recs durable in the spill file and acknowledges them.
func (a *LogdAuditor) spillRecords(recs []policy.AuditRecord, reason string, ack func(uint64)) error {
	a.mu.Lock()
	base := a.base
	a.mu.Unlock()
	batch := make([]SpilledRecord, len(recs))
	for i, r := range recs {
		batch[i] = SpilledRecord{JournalSeq: base + r.WriterSeq, Rec: r, ExecdRun: a.execdRun}
	}
	if err := a.spill.Append(batch); err != nil {
		return err
	}
	upTo := recs[len(recs)-1].WriterSeq
	a.done(upTo)
	a.log.Warn("audit records spilled", zap.Uint64("from", recs[0].WriterSeq), zap.Uint64("upTo", upTo),
		zap.Uint64("journalUpTo", base+upTo), zap.String("reason", reason), zap.Int64("spillBytes", a.spill.Size()))
	if a.onSpill != nil {
		a.onSpill(upTo, reason)
	} else {
		ack(upTo)
	}
	return nil
}

// syncCtx bounds a logd round with the sync timeout when there is a spill to fall back
// on; without one a record has nowhere else to go, so it waits.
func (a *LogdAuditor) syncCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.spill == nil {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.syncTimeout)
}

// send appends r as journal writerSeq seq unless this session already sent it.
//
// Records are always sent lowest first: the spill's from logd's lastWriterSeq on, else
// the pending ones. So when seq is above the next writerSeq logd expects, oomd holds
// none of the records in between: logd acknowledged them once and then lost them (its
// journal lost its tail, or was restored from a backup), and oomd dropped them on that
// acknowledgement. send then first appends one lost-record placeholder numbered seq-1
// that stands for all of them (logd accepts it across the gap), so the sequence
// continues instead of every append failing with a writerSeq gap for ever.
func (s *logdSession) send(ctx context.Context, r policy.AuditRecord, seq, run uint64) error {
	if seq <= s.sent {
		return nil // already sent on this session (or durable in logd before it opened)
	}
	if from := s.sent + 1; seq > from {
		lost := wire.LostRecord(seq-1, fmt.Sprintf("writerSeqs %d..%d of writer %s: logd no longer holds them "+
			"(its journal lost its tail or was restored from a backup) and oomd no longer has them", from, seq-1, WriterName))
		s.log.Error("logd lost audit records it had acknowledged; recording the gap and continuing",
			zap.Uint64("firstLost", from), zap.Uint64("lastLost", seq-1), zap.Uint64("next", seq))
		if err := s.append(ctx, lost, seq-1, 0); err != nil {
			return err
		}
	}
	return s.append(ctx, r, seq, run)
}

func (s *logdSession) append(ctx context.Context, r policy.AuditRecord, seq, run uint64) error {
	err := s.appender.Append(ctx, func(p oomdpb.Appender_append_Params) error {
		rec, err := p.NewRecord()
		if err != nil {
			return err
		}
		return wire.SetAuditRecord(rec, r, seq, run)
	})
	if err != nil {
		return fmt.Errorf("append: %w", err)
	}
	s.sent = seq
	return nil
}

// sync asks logd to make everything up to upTo durable and returns what it reports.
func (s *logdSession) sync(ctx context.Context, upTo uint64) (uint64, error) {
	f, rel := s.appender.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(upTo); return nil })
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return 0, fmt.Errorf("sync: %w", err)
	}
	s.durable = max(s.durable, res.DurableWriterSeq())
	return res.DurableWriterSeq(), nil
}

// flush sends recs not yet sent on this session, syncs, and acks what became durable.
func (a *LogdAuditor) flush(ctx context.Context, s *logdSession, recs []policy.AuditRecord, ack func(uint64)) error {
	a.mu.Lock()
	base := a.base
	a.mu.Unlock()
	ctx, cancel := a.syncCtx(ctx)
	defer cancel()
	for _, r := range recs {
		if err := s.send(ctx, r, base+r.WriterSeq, a.execdRun); err != nil {
			return err
		}
	}
	durable, err := s.sync(ctx, base+recs[len(recs)-1].WriterSeq)
	if err != nil {
		return err
	}
	if durable < base {
		return fmt.Errorf("sync: logd says durable up to %d, below this run's base %d", durable, base)
	}
	coreSeq := min(durable-base, recs[len(recs)-1].WriterSeq)
	a.done(coreSeq)
	// One line per flush (at most one per tick in a flood): what is now safe in logd.
	a.log.Info("audit durable in logd", zap.Uint64("from", recs[0].WriterSeq), zap.Uint64("seq", coreSeq), zap.Uint64("journalSeq", durable))
	ack(coreSeq)
	return nil
}

// replay sends logd the next chunk of spilled records it does not have yet and reports
// whether logd now holds them all.
func (a *LogdAuditor) replay(ctx context.Context, s *logdSession) (bool, error) {
	recs := a.spill.Records()
	last := recs[len(recs)-1].JournalSeq
	i := sort.Search(len(recs), func(i int) bool { return recs[i].JournalSeq > s.durable })
	if i == len(recs) {
		return true, nil
	}
	chunk := recs[i:min(i+replayChunk, len(recs))]
	ctx, cancel := a.syncCtx(ctx)
	defer cancel()
	for _, r := range chunk {
		if err := s.send(ctx, r.Rec, r.JournalSeq, r.ExecdRun); err != nil {
			return false, err
		}
	}
	upTo := chunk[len(chunk)-1].JournalSeq
	durable, err := s.sync(ctx, upTo)
	if err != nil {
		return false, err
	}
	if durable < upTo {
		return false, fmt.Errorf("sync: logd says durable up to %d, want %d", durable, upTo)
	}
	a.log.Info("replayed spilled audit records to logd", zap.Uint64("from", chunk[0].JournalSeq), zap.Uint64("upTo", upTo),
		zap.Uint64("spillLast", last))
	return durable >= last, nil
}

var _ Auditor = (*LogdAuditor)(nil)
