package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/services/oomd/policy"
)

// auditStep is what the auditor does next with the state it finds (auditView.next).
type auditStep int

const (
	// stepWait: nothing can be done now; wait for a record, a dial, a retry or the end.
	stepWait auditStep = iota
	// stepSpill: the pending records go to the spill file.
	stepSpill
	// stepFlush: the pending records go to logd.
	stepFlush
	// stepReplay: the spill's next chunk goes to logd.
	stepReplay
)

func (s auditStep) String() string {
	switch s {
	case stepSpill:
		return "spill"
	case stepFlush:
		return "flush"
	case stepReplay:
		return "replay"
	}
	return "wait"
}

// auditView is what the auditor decides on, taken afresh before every step.
type auditView struct {
	pending   int  // records submitted and not yet durable
	hasSpill  bool // a spill file was given (UseSpill)
	spilled   bool // the spill file holds records (so logd may lack them)
	connected bool // a logd session is open
}

// next says what to do. Pending records come first: they may hold a kill. With a spill
// file they go there when logd is not connected, and also when the spill still holds
// records, because logd must receive every record in writerSeq order. Without a spill
// file they wait for logd. Only when nothing is pending is the spill replayed.
func (v auditView) next() auditStep {
	switch {
	case v.pending > 0 && v.hasSpill && (v.spilled || !v.connected):
		return stepSpill
	case v.pending > 0 && v.connected:
		return stepFlush
	case v.pending == 0 && v.spilled && v.connected:
		return stepReplay
	}
	return stepWait
}

// spillReason is the reason spilled records carry: why logd did not get them directly.
// cause is why the last session ended (or that there was none).
func (v auditView) spillReason(cause string) string {
	if v.spilled && v.connected {
		return "earlier records not yet replayed to logd"
	}
	return cause
}

const (
	backoffFirst = 50 * time.Millisecond
	backoffMax   = 2 * time.Second
)

// backoff is a retry delay: none until a failure, then backoffFirst, doubling with each
// further one up to backoffMax, and none again after progress.
type backoff struct{ d time.Duration }

// grow counts a failure and returns the delay it calls for.
func (b *backoff) grow() time.Duration {
	b.d = min(max(b.d*2, backoffFirst), backoffMax)
	return b.d
}

func (b *backoff) reset()               { b.d = 0 }
func (b *backoff) delay() time.Duration { return b.d }

// auditLoop is the state LogdAuditor.run keeps between steps. Only run's goroutine
// touches it; what other goroutines share (the pending records, the journal reference)
// stays in LogdAuditor under its mutex.
type auditLoop struct {
	a   *LogdAuditor
	ack func(upTo uint64)

	s     *logdSession // the open session; nil: not connected
	cause string       // why s is nil: the reason records spilled meanwhile carry

	sessions chan *logdSession // a dial's result (nil: it failed); one dial at a time
	dialing  bool
	// redial delays the next dial. It grows with every dial's result and so with every
	// session lost, and resets only when logd acknowledged something: a logd that accepts
	// but stays slower than the sync timeout is not hammered.
	redial backoff
	// respill delays the next try after the spill refused records (full or failing).
	respill backoff
	retry   <-chan time.Time // armed after a spill or a replay that failed; nil: none
}

func newAuditLoop(a *LogdAuditor, s *logdSession, ack func(upTo uint64)) *auditLoop {
	return &auditLoop{a: a, ack: ack, s: s, cause: "logd unreachable", sessions: make(chan *logdSession, 1)}
}

func (l *auditLoop) view(pending int) auditView {
	spilled := l.a.spill != nil && l.a.spill.Len() > 0
	return auditView{pending: pending, hasSpill: l.a.spill != nil, spilled: spilled, connected: l.s != nil}
}

// step does what the state calls for and reports whether to look again at once (it made
// progress, or the session changed) rather than wait.
func (l *auditLoop) step(ctx context.Context) bool {
	recs := l.a.snapshot()
	v := l.view(len(recs))
	switch v.next() {
	case stepSpill:
		return l.spillPending(ctx, recs, v)
	case stepFlush:
		if err := l.a.flush(ctx, l.s, recs, l.ack); err != nil {
			if ctx.Err() == nil {
				l.drop(err) // with a spill file the records go there now
			}
			return true
		}
		l.redial.reset()
		return true
	case stepReplay:
		if l.replayStep(ctx) {
			return true
		}
		if l.s != nil { // the spill could not be emptied: try again later
			l.retry = time.After(time.Second)
		}
	}
	return false
}

// spillPending makes recs durable in the spill file (and acknowledges them) and reports
// whether anything made progress.
func (l *auditLoop) spillPending(ctx context.Context, recs []policy.AuditRecord, v auditView) bool {
	err := l.a.spillRecords(recs, v.spillReason(l.cause), l.ack)
	if err == nil {
		l.respill.reset()
		return true
	}
	l.a.spillFailures.Add(1)
	// Full (or failing): the records wait in memory, and so do their kills. If logd is
	// there, draining the spill into it makes room.
	if v.spilled && v.connected && l.replayStep(ctx) {
		return true
	}
	l.a.log.Error("audit records could not be spilled; they wait (and so do their kills)",
		zap.Int("pending", len(recs)), zap.Error(err))
	l.retry = time.After(l.respill.grow())
	return false
}

// replayStep sends logd the next chunk of the spill and empties the spill once logd has
// it all; it reports whether that made progress.
func (l *auditLoop) replayStep(ctx context.Context) bool {
	done, err := l.a.replay(ctx, l.s)
	if err != nil {
		if ctx.Err() == nil {
			l.drop(fmt.Errorf("replay: %w", err))
		}
		return false
	}
	l.redial.reset()
	if done {
		n, _ := l.a.spill.Last()
		if err := l.a.spill.Reset(); err != nil {
			l.a.log.Error("could not empty the replayed spill file", zap.Error(err))
			return false
		}
		l.a.log.Info("spill file replayed to logd and emptied", zap.Uint64("upTo", n))
	}
	return true
}

// wait blocks until something may have changed: a record was submitted, a retry is due,
// a dial ended, or the session closed. Without a session it dials first. It reports
// false when ctx ended.
func (l *auditLoop) wait(ctx context.Context) bool {
	if l.s == nil {
		l.dial(ctx)
	}
	var connDone <-chan struct{}
	if l.s != nil {
		connDone = l.s.conn.Done()
	}
	select {
	case <-ctx.Done():
		return false
	case <-l.a.wake:
	case <-l.retry:
		l.retry = nil
	case ns := <-l.sessions:
		l.dialed(ns)
	case <-connDone:
		l.drop(errors.New("logd connection closed"))
	}
	return true
}

// dial starts connecting to logd after the redial delay, unless a dial is under way or
// a session is open; the result arrives on l.sessions.
func (l *auditLoop) dial(ctx context.Context) {
	if l.dialing || l.s != nil {
		return
	}
	l.dialing = true
	go l.a.dialAfter(ctx, l.redial.delay(), l.sessions)
}

// dialed takes a dial's result (nil: it failed).
func (l *auditLoop) dialed(ns *logdSession) {
	l.dialing = false
	l.redial.grow()
	if ns != nil {
		l.s = ns
	}
}

// drop ends the session after err; records go to the spill (or wait) until a dial
// brings another.
func (l *auditLoop) drop(err error) {
	l.a.log.Warn("lost logd; reconnecting", zap.Error(err))
	go l.s.close() // may wait on a frozen peer (docs/capnp-traps.md, trap 2)
	l.s = nil
	l.a.forgetJournal()
	l.cause = truncate("logd: "+err.Error(), 120)
}

// close ends the session, if any, when run returns, and the one a dial still under way
// brings (dialAfter always sends one result; ctx has ended, so it comes soon).
func (l *auditLoop) close() {
	if l.s != nil {
		go l.s.close()
	}
	if l.dialing {
		go func() {
			if s := <-l.sessions; s != nil {
				l.a.forgetJournal()
				s.close()
			}
		}()
	}
}

// dialAfter connects to logd after delay and sends the session on out, or nil when the
// connect failed or ctx ended first.
func (a *LogdAuditor) dialAfter(ctx context.Context, delay time.Duration, out chan<- *logdSession) {
	select {
	case <-ctx.Done():
		out <- nil
		return
	case <-time.After(delay):
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	s, err := a.connect(dctx)
	cancel()
	if err != nil {
		a.log.Warn("logd unreachable", zap.Error(err), zap.Bool("spill", a.spill != nil))
	}
	if s != nil && ctx.Err() != nil {
		// The auditor is stopping and nobody will take this session: end it here, with
		// the journal reference connect kept.
		a.forgetJournal()
		go s.close()
		s = nil
	}
	out <- s
}
