package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/internal/loopwait"
	"oomd.dev/oomd/services/oomd/policy"
)

// The owner loop, in the style of etcd-io/raft's node.run: Run's goroutine is the only
// one that touches the core. It sleeps on one epoll set (internal/loopwait) and, each
// time it wakes, steps what woke it and carries out the core's Ready before the next:
//
//	in          answers from other goroutines: audit acks and spills, terminate answers,
//	            the teardown's report — stepped in the order they came
//	calls       work that must see or change the loop's state: registrations, exits,
//	            policy changes, status and event queries; the caller waits for it
//	tick        the policy's sampleMs: drain samples, read pages, kernel counts and (when
//	            the intervals match) MemAvailable, then InputTick
//	levels      the level clock, when levels.intervalMs differs from sampleMs
//	halt bound  Ready.HaltTimer's clock: InputHaltTimeout
//
// Answers and calls wait on channels and ring the loop's bell; the clocks are timerfds in
// the same set. Queued work is taken before the clocks (it came before the wake-up was
// seen), answers before calls: an answer queued before a call is always stepped first.
// The live trace records the order as it happened.
//
// Nothing on the loop waits for another process: logd, execd and subscribers are
// served by goroutines of their own, which answer on `in`.

// inputQueue is how many answers can wait for the loop. The goroutines that send them
// (one auditor, one per terminate, one teardown) block when it is full, never drop.
const inputQueue = 64

// callQueue is how many calls can wait for the loop; callers block when it is full.
const callQueue = 64

// drainBudget is how much queued work one wake-up takes before the clocks get their
// turn: a flood of calls delays a tick by at most this many steps.
const drainBudget = 256

// errStopped answers calls made after the loop ended.
var errStopped = errors.New("oomd is stopping")

// call is work to run on the loop; done is closed when it ran.
type call struct {
	fn   func()
	done chan struct{}
}

// do runs f on the loop and waits for it. It fails only when the loop ended before
// running f; a call made before Run starts waits for it. f must not call do (it runs on
// the loop).
func (d *Daemon) do(f func()) error {
	c := call{fn: f, done: make(chan struct{})}
	select {
	case d.calls <- c:
		d.wait.Ring() // queued first, rung after: the loop takes what the bell finds
	case <-d.stopped:
		return errStopped
	}
	select {
	case <-c.done:
		return nil
	case <-d.stopped:
		// The loop closes stopped only after the call it is running returned.
		select {
		case <-c.done:
			return nil
		default:
			return errStopped
		}
	}
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
		d.wait.Ring()
	case <-d.stopped:
	}
}

// Done is closed when Run has returned (or, before Run, never).
func (d *Daemon) Done() <-chan struct{} { return d.stopped }

// Run is the owner loop; it returns when ctx ends, or with an error when the kernel
// fails its wait (oomd then exits, and execd restarts it). Call it once, after Start.
func (d *Daemon) Run(ctx context.Context) error {
	defer close(d.stopped)
	defer d.wait.Close()
	defer d.flushOnExit()
	if err := d.clocks.init(d.wait); err != nil {
		return err
	}
	if err := d.clocks.configure(d.core.Policy(), d.manualTicks); err != nil {
		return err
	}
	defer context.AfterFunc(ctx, d.wait.Ring)()
	for {
		fired, err := d.wait.Wait()
		if err != nil {
			return fmt.Errorf("owner loop: %w", err)
		}
		if ctx.Err() != nil {
			d.subs.closeAll()
			if d.cfg.Trace != nil {
				d.cfg.Trace.Close() // flushed; later steps skip the closed trace
			}
			return nil
		}
		if fired.Rang() {
			d.drain()
		}
		if fired.Has(d.clocks.tickT) {
			d.tick()
			if d.cfg.Alive != nil {
				d.cfg.Alive()
			}
		}
		// A clock read in this wake-up may have been stopped by a call just drained (a
		// policy without levels, the halt's outcome): then its expiry is not stepped.
		if fired.Has(d.clocks.levelT) && d.clocks.levelsOwn {
			d.sampleLevels()
			d.processReady()
		}
		if fired.Has(d.clocks.haltT) && d.clocks.halting {
			d.clocks.haltFired()
			d.feed(policy.Input{Kind: policy.InputHaltTimeout})
			d.processReady()
		}
		d.settleDurable()
	}
}

// drain steps the queued answers and calls, each with its Ready, up to drainBudget; what
// is left rings the bell again, to be taken after the clocks had their turn. (With the
// queues smaller than the budget, work left over always has a ring of its own not yet
// read; the Ring keeps that true if they grow.)
func (d *Daemon) drain() {
	for range drainBudget {
		// Answers first: one queued before a call is stepped before it (an audit ack,
		// then a status query, sees the ack), and answers come from a bounded few.
		select {
		case in := <-d.in:
			d.feed(in)
			d.processReady()
		default:
			select {
			case c := <-d.calls:
				c.fn()
				d.processReady() // what the call caused is carried out before it returns
				close(c.done)
			default:
				return
			}
		}
		d.settleDurable()
	}
	d.wait.Ring()
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

// traceFlushEvery is how long an idle loop keeps trace records buffered (ten seconds of
// idle ticks are ~2 KiB of the 64 KiB buffer). A decision's trace does not wait: the
// tick after any events or audit records flushes, so it is on disk as soon as its record
// is on the way to logd. Each write is a system call that wakes Go's sysmon thread: at
// once a second those were two of an idle oomd's twelve context switches a second.
const traceFlushEvery = 10 * time.Second

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

// flushOnExit writes the buffered trace when the loop ends otherwise than by its context
// (which closes the trace): by a panic, or a failed wait. The process is about to die,
// and the inputs that led there are the ones worth having.
func (d *Daemon) flushOnExit() {
	if t := d.cfg.Trace; t != nil && t.Err() == nil {
		_ = t.Flush() // the panic is what gets reported
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

// clocks are the loop's timers, in its waiter: the tick, the level clock and the halt
// bound. The Go runtime keeps no timer for them, so its sysmon thread does not wake with
// every tick of an idle oomd.
type clocks struct {
	w                    *loopwait.Waiter
	tickT, levelT, haltT loopwait.Timer
	period               time.Duration
	ticking              bool          // the tick clock is armed (not in tests: ticks come as calls)
	levelsEvery          time.Duration // the level clock's period; 0: levels off
	levelsOwn            bool          // the level clock is armed (its interval differs from the tick's)
	levelsOnTick         bool          // the level readings are taken on every tick
	psi                  bool          // and memory pressure with them
	halting              bool          // the halt bound is armed
	claimedAt            time.Time
}

// init makes the three clocks in w, unarmed.
func (c *clocks) init(w *loopwait.Waiter) error {
	c.w = w
	for _, t := range []*loopwait.Timer{&c.tickT, &c.levelT, &c.haltT} {
		var err error
		if *t, err = w.NewTimer(); err != nil {
			return err
		}
	}
	return nil
}

// configure sets the clocks for policy p: the tick every SampleMs, and the level clock
// on the tick when its interval is SampleMs (or unset), on its own when it differs. It
// fails only when the kernel refuses to set a timerfd.
func (c *clocks) configure(p policy.Policy, manual bool) error {
	period := time.Duration(p.SampleMs) * time.Millisecond
	if !manual && (!c.ticking || period != c.period) {
		if err := c.w.Every(c.tickT, period); err != nil {
			return fmt.Errorf("tick: %w", err)
		}
		c.ticking = true
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
	own := every != 0 && every != period && !manual
	var err error
	switch {
	case own && (!c.levelsOwn || every != c.levelsEvery):
		err = c.w.Every(c.levelT, every)
	case !own && c.levelsOwn:
		err = c.w.Stop(c.levelT)
	}
	if err != nil {
		return fmt.Errorf("level clock: %w", err)
	}
	c.levelsOwn, c.levelsEvery = own, every
	return nil
}

// startHalt starts the halt bound (Ready.HaltTimer); the core hands it out once.
func (c *clocks) startHalt(d time.Duration) error {
	c.claimedAt = time.Now()
	err := c.w.After(c.haltT, d)
	c.halting = err == nil
	return err
}

func (c *clocks) haltFired() { c.halting = false }

// endHalt stops the bound (the outcome came, by whichever clock) and returns the time
// since the claim. A stopped bound cannot fire afterwards (loopwait.Waiter.Stop), and an
// expiry read in the same wake-up is dropped by Run (halting is false).
func (c *clocks) endHalt() time.Duration {
	if c.halting {
		_ = c.w.Stop(c.haltT) // fails only on a closed waiter: nothing left to fire
		c.halting = false
	}
	if c.claimedAt.IsZero() {
		return 0
	}
	return time.Since(c.claimedAt)
}
