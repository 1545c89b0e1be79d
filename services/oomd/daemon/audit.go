package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/wire"
	"oomd.dev/oomd/services/oomd/policy"
)

// WriterName is how oomd names itself to logd.
const WriterName = "oomd"

// LogdAuditor makes the core's audit records durable in logd. A record counts only
// when logd's sync returned past it (fsync'ed); only then is the core told, so no
// terminate request can overtake its audit record (security invariant 3).
//
// The core numbers records from 1 in every oomd run; logd's per-writer sequence
// survives restarts. The auditor maps one onto the other with the offset logd reported
// when this run first opened the journal.
type LogdAuditor struct {
	path string
	log  *zap.Logger

	mu      sync.Mutex
	pending []policy.AuditRecord // submitted, not yet durable, in WriterSeq order
	wake    chan struct{}
	journal oomdpb.Journal // current connection's journal; zero when disconnected
	base    uint64
	opened  bool
}

// NewLogdAuditor returns an auditor for the logd socket at path.
func NewLogdAuditor(path string, log *zap.Logger) *LogdAuditor {
	return &LogdAuditor{path: path, log: log.Named("audit"), wake: make(chan struct{}, 1)}
}

// Submit queues records; they are sent in order by the auditor's goroutine.
func (a *LogdAuditor) Submit(recs []policy.AuditRecord) {
	a.mu.Lock()
	a.pending = append(a.pending, recs...)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
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

// Start connects to logd (waiting up to startTimeout for it) and then keeps the
// connection, reconnecting with backoff when logd goes away.
func (a *LogdAuditor) Start(ctx context.Context, ack func(upTo uint64)) error {
	const startTimeout = 10 * time.Second
	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var (
		s   *logdSession
		err error
	)
	for backoff := 10 * time.Millisecond; ; backoff = min(backoff*2, time.Second) {
		if s, err = a.connect(sctx); err == nil {
			break
		}
		select {
		case <-sctx.Done():
			return fmt.Errorf("logd at %s: %w", a.path, err)
		case <-time.After(backoff):
		}
	}
	go a.run(ctx, s, ack)
	return nil
}

type logdSession struct {
	conn     *rpc.Conn
	appender oomdpb.Appender
	last     uint64 // logd's lastWriterSeq at open
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
		conn.Close()
		return nil, fmt.Errorf("open journal: %w", err)
	}
	s := &logdSession{conn: conn, appender: res.Appender().AddRef(), last: res.LastWriterSeq()}
	// The limiter must sit on the reference we call through (CAPNP-NOTES trap 4).
	s.appender.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))
	a.mu.Lock()
	if !a.opened {
		a.base, a.opened = s.last, true
	}
	if a.journal.IsValid() {
		a.journal.Release()
	}
	a.journal = journal
	a.mu.Unlock()
	a.log.Info("connected to logd", zap.String("socket", a.path), zap.Uint64("lastWriterSeq", s.last))
	return s, nil
}

func (a *LogdAuditor) run(ctx context.Context, s *logdSession, ack func(uint64)) {
	sent := s.last // highest journal writerSeq sent on this session
	for {
		if s == nil {
			var err error
			for backoff := 50 * time.Millisecond; s == nil; backoff = min(backoff*2, 2*time.Second) {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				if s, err = a.connect(ctx); err != nil {
					a.log.Warn("logd unreachable; audit records wait", zap.Error(err))
				}
			}
			sent = s.last
		}
		err := a.flush(ctx, s, &sent, ack)
		if err == nil {
			select {
			case <-ctx.Done():
				s.close()
				return
			case <-s.conn.Done():
				err = errors.New("logd connection closed")
			case <-a.wake:
				continue
			}
		}
		if ctx.Err() != nil {
			s.close()
			return
		}
		a.log.Warn("lost logd; reconnecting", zap.Error(err))
		s.close()
		a.mu.Lock()
		if a.journal.IsValid() {
			a.journal.Release()
			a.journal = oomdpb.Journal{}
		}
		a.mu.Unlock()
		s = nil
	}
}

// flush sends every pending record not yet sent on this session, syncs, and acks what
// became durable.
func (a *LogdAuditor) flush(ctx context.Context, s *logdSession, sent *uint64, ack func(uint64)) error {
	a.mu.Lock()
	recs := append([]policy.AuditRecord(nil), a.pending...)
	base := a.base
	a.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	for _, r := range recs {
		seq := base + r.WriterSeq
		if seq <= *sent {
			continue // already durable in logd (sent before a reconnect)
		}
		err := s.appender.Append(ctx, func(p oomdpb.Appender_append_Params) error {
			rec, err := p.NewRecord()
			if err != nil {
				return err
			}
			return wire.SetAuditRecord(rec, r, seq)
		})
		if err != nil {
			return fmt.Errorf("append: %w", err)
		}
		*sent = seq
	}
	upTo := base + recs[len(recs)-1].WriterSeq
	f, rel := s.appender.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(upTo); return nil })
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	durable := res.DurableWriterSeq()
	if durable < base {
		return fmt.Errorf("sync: logd says durable up to %d, below this run's base %d", durable, base)
	}
	coreSeq := durable - base
	a.mu.Lock()
	i := 0
	for i < len(a.pending) && a.pending[i].WriterSeq <= coreSeq {
		i++
	}
	a.pending = append(a.pending[:0], a.pending[i:]...)
	a.mu.Unlock()
	a.log.Debug("audit durable", zap.Uint64("seq", coreSeq), zap.Uint64("journalSeq", durable))
	ack(coreSeq)
	return nil
}

var _ Auditor = (*LogdAuditor)(nil)
