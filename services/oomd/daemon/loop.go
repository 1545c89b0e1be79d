package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/internal/timerfd"
	"oomd.dev/oomd/services/oomd/policy"
)

// The owner loop, in the style of etcd-io/raft's node.run: Run's goroutine is the only
// one that touches the core. Each turn takes one input from a channel, steps it, and
// carries out the core's Ready before the next:
//
//	tick        the policy's sampleMs: drain samples, read pages, kernel counts and (when
//	            the intervals match) MemAvailable, then InputTick
//	levels      the level clock, when levels.intervalMs differs from sampleMs
//	halt bound  Ready.HaltTimer's wall-clock timer: InputHaltTimeout
//	in          answers from other goroutines: audit acks and spills, terminate answers,
//	            the teardown's report — stepped in the order they came (among
//	            themselves: a ready answer and a ready call are taken in either order,
//	            which the core accepts and the live trace records as it happened)
//	calls       work that must see or change the loop's state: registrations, exits,
//	            policy changes, status and event queries; the caller waits for it
//
// Nothing on the loop waits for another process: logd, execd and subscribers are
// served by goroutines of their own, which answer on `in`.

// inputQueue is how many answers can wait for the loop. The goroutines that send them
// (one auditor, one per terminate, one teardown) block when it is full, never drop.
const inputQueue = 64

// errStopped answers calls made after the loop ended.
var errStopped = errors.New("oomd is stopping")

// call is work to run on the loop; done is closed when it ran.
type call struct {
	fn   func()
	done chan struct{}
}

// do runs f on the loop and waits for it. It fails only when the loop has ended; a call
// made before Run starts waits for it. f must not call do (it runs on the loop).
func (d *Daemon) do(f func()) error {
	c := call{fn: f, done: make(chan struct{})}
	select {
	case d.calls <- c:
	case <-d.stopped:
		return errStopped
	}
	<-c.done // a call the loop took always runs to the end
	return nil
}

// query returns f's result, computed on the loop.
func query[T any](d *Daemon, f func() T) (T, error) {
	var v T
	err := d.do(func() { v = f() })
	return v, err
}

// send hands an answer to the loop without waiting for it to be stepped.
func (d *Daemon) send(in policy.Input) {
	select {
	case d.in <- in:
	case <-d.stopped:
	}
}

// Run is the owner loop; it returns when ctx ends. Call it once, after Start.
func (d *Daemon) Run(ctx context.Context) error {
	defer close(d.stopped)
	defer d.clocks.stop()
	if err := d.clocks.configure(d.core.Policy(), d.manualTicks); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			d.subs.closeAll()
			if d.cfg.Trace != nil {
				d.cfg.Trace.Close() // flushed; later steps skip the closed trace
			}
			return nil
		case <-d.clocks.tickC():
			d.tick()
			if d.cfg.Alive != nil {
				d.cfg.Alive()
			}
		case <-d.clocks.levelC():
			d.sampleLevels()
		case <-d.clocks.haltC():
			d.clocks.haltFired()
			d.feed(policy.Input{Kind: policy.InputHaltTimeout})
		case in := <-d.in:
			d.feed(in)
		case c := <-d.calls:
			c.fn()
			d.processReady() // what the call caused is carried out before it returns
			close(c.done)
		}
		d.processReady()
		poke(d.sys.stepped)
	}
}

// tick drains the coalesced samples into the core, takes the per-tick readings and
// advances the core by one tick.
func (d *Daemon) tick() {
	// A duration, not a time for people: the monotonic clock, not Config.Now.
	start := time.Now()
	d.drainBuf = d.dirty.take(d.drainBuf)
	// Feed in subject order so the core sees the same inputs whatever order the samples
	// raced in within this tick.
	slices.SortFunc(d.drainBuf, func(a, b *slot) int {
		switch {
		case a.subject < b.subject:
			return -1
		case a.subject > b.subject:
			return 1
		}
		return 0
	})
	d.readAll()
	for _, s := range d.drainBuf {
		if n := s.rejected.Swap(0); n > 0 {
			s.mu.Lock()
			claimed := s.claimed
			s.mu.Unlock()
			d.feed(policy.Input{Kind: policy.InputSample, Subject: s.subject, Instance: s.instance, Claimed: claimed, Count: n, Slot: s.coreSlot})
		}
		if n := s.accepted.Swap(0); n > 0 {
			d.feed(policy.Input{Kind: policy.InputSample, Subject: s.subject, Instance: s.instance, Claimed: s.subject, Bytes: s.bytes.Load(), Count: n, Slot: s.coreSlot})
		}
	}
	if d.clocks.levelsOnTick {
		d.sampleLevels()
	}
	d.feed(policy.Input{Kind: policy.InputTick})
	d.processReady()
	d.flushTrace()
	d.tickSeconds.Observe(time.Since(start).Seconds())
}

// traceFlushEvery is how long an idle loop keeps trace records buffered: it writes them
// once a second, not on every tick (a write per tick was a tenth of an idle oomd's
// syscalls), and at once after a tick with events or audit records, so a decision's
// trace is on disk as soon as its record is on the way to logd.
const traceFlushEvery = time.Second

// flushTrace writes the buffered trace when it is due (loop only).
func (d *Daemon) flushTrace() {
	t := d.cfg.Trace
	if t == nil || t.Err() != nil {
		return
	}
	d.traceTicks++
	if !d.traceNews && time.Duration(d.traceTicks)*d.clocks.period < traceFlushEvery {
		return
	}
	d.traceNews, d.traceTicks = false, 0
	if err := t.Flush(); err != nil {
		d.log.Error("live trace stopped; the watchdog goes on without it", zap.Error(err))
	}
}

// feed steps one input. Errors are inputs the core refused as malformed; they are
// logged, never fatal.
func (d *Daemon) feed(in policy.Input) {
	if err := d.coreStep(in); err != nil {
		d.log.Warn("core refused input", zap.Stringer("kind", in.Kind), zap.String("subject", in.Subject), zap.Error(err))
	}
}

// coreStep is the one place the core is stepped: the input goes to the live trace
// first, so the trace holds exactly what the core saw, in order.
func (d *Daemon) coreStep(in policy.Input) error {
	if t := d.cfg.Trace; t != nil && t.Err() == nil {
		if err := t.Input(in); err != nil {
			d.log.Error("live trace stopped; the watchdog goes on without it", zap.Error(err))
		}
	}
	return d.core.Step(in)
}

// processReady executes the core's Ready in the order the core demands (policy.Ready).
// Nothing here waits: audit submission, terminate calls and the teardown are
// asynchronous, and their outcomes come back on the loop's `in`.
func (d *Daemon) processReady() {
	if !d.core.HasReady() {
		return
	}
	rd := d.core.Ready()
	d.traceNews = d.traceNews || len(rd.Audit) > 0 || len(rd.Events) > 0
	if len(rd.Audit) > 0 {
		recs := slices.Clone(rd.Audit)
		if d.cfg.Trace != nil {
			// The inputs that led to these records end here in the live trace.
			pos := d.cfg.Trace.Position()
			for i := range recs {
				recs[i].TracePos = pos
			}
		}
		d.audit.Submit(recs)
	}
	for _, req := range rd.Terminate {
		go d.terminate(req)
	}
	d.systemReady(rd)
	if len(rd.Events) > 0 {
		d.coverSeq(rd.Events[len(rd.Events)-1].Seq)
		now := d.cfg.Now().UnixNano()
		for _, e := range rd.Events {
			d.walls.put(e.Seq, now)
			d.stats.event(e.Kind)
			d.publish(e)
		}
		d.subs.wake()
	}
	d.core.Advance()
	if t := d.cfg.Trace; t != nil && t.Full() {
		// Rotate: the next file starts from the state now (nothing is pending).
		st, err := d.core.State()
		if err == nil {
			err = t.Start(st)
		}
		if err != nil {
			d.log.Error("live trace stopped; the watchdog goes on without it", zap.Error(err))
		}
	}
}

// coverSeq makes the high-water mark cover seq before an event with it is shown.
// A failure is logged, not fatal: the watchdog keeps working, and only a restart before
// the mark is written again can reuse the numbers above it.
func (d *Daemon) coverSeq(seq uint64) {
	if d.cfg.EventSeq == nil {
		return
	}
	err := d.cfg.EventSeq.Cover(seq)
	switch {
	case err != nil && !d.seqErr:
		d.log.Error("event seq high-water mark not written: a restart may reuse event seqs", zap.Uint64("seq", seq), zap.Error(err))
	case err == nil && d.seqErr:
		d.log.Info("event seq high-water mark written again", zap.Uint64("seq", seq))
	}
	d.seqErr = err != nil
}

func (d *Daemon) publish(e policy.Event) {
	fields := []zap.Field{zap.Uint64("seq", e.Seq), zap.Uint64("tick", e.Tick), zap.String("subject", e.Subject)}
	if e.Bytes != 0 {
		fields = append(fields, zap.Uint64("bytes", e.Bytes))
	}
	if e.Limit != 0 {
		fields = append(fields, zap.Uint64("limit", e.Limit))
	}
	if e.Decision != 0 {
		fields = append(fields, zap.Uint64("decision", e.Decision))
	}
	if e.Reason != "" {
		fields = append(fields, zap.String("reason", e.Reason))
	}
	// One line per event; for a decision its message says why in words (why.go), and
	// the fields carry the numbers.
	d.log.Info(why(e), append(fields, zap.String("event", e.Kind.String()))...)
	switch e.Kind {
	case policy.EventKilled:
		fmt.Fprintf(d.cfg.Markers, "oomd: kill app=%s bytes=%d\n", e.Subject, e.Bytes)
	case policy.EventKillDenied:
		fmt.Fprintf(d.cfg.Markers, "oomd: kill denied (subject=%s reason=%s)\n", e.Subject, e.Reason)
	case policy.EventMemstatUnderReported:
		fmt.Fprintf(d.cfg.Markers, "oomd: memstat under-reported app=%s kernel=%d published=%d\n", e.Subject, e.Bytes, e.Limit)
	}
}

// clocks are the loop's timers. Each is a channel the loop selects on; a nil channel
// (no timer) is never ready. The tick and the level clock are timerfds (internal/timerfd):
// the Go runtime keeps no timer for them, so its sysmon thread does not wake with every
// tick of an idle oomd.
type clocks struct {
	period       time.Duration
	ticker       *timerfd.Ticker // nil: ticks come as calls (tests)
	levels       *timerfd.Ticker // nil: levels off, or sampled on the tick
	levelsEvery  time.Duration
	levelsOnTick bool // the level readings are taken on every tick
	psi          bool // and memory pressure with them

	halt      *time.Timer // the halt bound on the wall clock (Ready.HaltTimer)
	claimedAt time.Time
}

// configure sets the clocks for policy p: the tick every SampleMs, and the level clock
// on the tick when its interval is SampleMs (or unset), on its own when it differs. It
// fails only when the kernel refuses a timerfd.
func (c *clocks) configure(p policy.Policy, manual bool) error {
	period := time.Duration(p.SampleMs) * time.Millisecond
	var err error
	switch {
	case manual:
	case c.ticker == nil:
		c.ticker, err = timerfd.NewTicker(period)
	case period != c.period:
		err = c.ticker.Reset(period)
	}
	if err != nil {
		return fmt.Errorf("tick: %w", err)
	}
	c.period = period
	every := time.Duration(0)
	if p.Levels.Enabled() {
		every = time.Duration(p.Levels.IntervalMs) * time.Millisecond
		if every == 0 {
			every = period
		}
	}
	// Manual ticks (tests) take no readings of their own: the test steps the levels.
	c.levelsOnTick = every == period && every != 0 && !manual
	c.psi = p.Levels.PSIEnabled()
	own := every != 0 && every != period
	if c.levels != nil && (!own || every != c.levelsEvery) {
		c.levels.Stop()
		c.levels = nil
	}
	if own && c.levels == nil && !manual {
		if c.levels, err = timerfd.NewTicker(every); err != nil {
			return fmt.Errorf("level clock: %w", err)
		}
	}
	c.levelsEvery = every
	return nil
}

func (c *clocks) stop() {
	for _, t := range []*timerfd.Ticker{c.ticker, c.levels} {
		if t != nil {
			t.Stop()
		}
	}
	if c.halt != nil {
		c.halt.Stop()
	}
}

func (c *clocks) tickC() <-chan time.Time {
	if c.ticker == nil {
		return nil
	}
	return c.ticker.C
}

func (c *clocks) levelC() <-chan time.Time {
	if c.levels == nil {
		return nil
	}
	return c.levels.C
}

func (c *clocks) haltC() <-chan time.Time {
	if c.halt == nil {
		return nil
	}
	return c.halt.C
}

// startHalt starts the halt bound (Ready.HaltTimer); the core hands it out once.
func (c *clocks) startHalt(d time.Duration) {
	c.claimedAt = time.Now()
	c.halt = time.NewTimer(d)
}

func (c *clocks) haltFired() { c.halt = nil }

// endHalt stops the bound (the outcome came, by whichever clock) and returns the time
// since the claim.
func (c *clocks) endHalt() time.Duration {
	if c.halt != nil {
		c.halt.Stop()
		c.halt = nil
	}
	if c.claimedAt.IsZero() {
		return 0
	}
	return time.Since(c.claimedAt)
}
