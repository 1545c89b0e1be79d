package supervisor

import (
	"context"
	"slices"
	"sync"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
)

// MaxExitBacklog bounds the exit reports kept for a watcher that is absent or behind.
// Beyond it the oldest reports are dropped (and counted in the log), except the one
// handed to a watcher and not yet acknowledged (in flight, or its watcher died): oomd
// answers a report only once what it caused is durable, so that one may be a kill whose
// record waits for logd, and it is the report a crash of oomd must not lose. A manifest has at most 256 services, so this covers several restarts of
// each while oomd is away or behind.
const MaxExitBacklog = 1024

// exitQueue holds exit reports in order until the registered watcher acknowledged them.
// One pusher goroutine per watcher sends them one call at a time, so a slow or dead
// watcher never blocks the supervisor (docs/capnp-traps.md, trap 1) and the calls need no flow
// limiter (at most one in flight).
type exitQueue struct {
	log *zap.Logger

	mu      sync.Mutex
	items   []queuedExit
	nextSeq uint64
	sending uint64 // the seq of the report handed to a watcher and not yet acknowledged (0: none)
	dropped uint64
	gen     uint64 // increments with each watcher; a pusher of an older gen stops
	wake    chan struct{}
	cancel  context.CancelFunc
	closed  bool
	pushers sync.WaitGroup

	pusherDone func() // tests: called as each pusher goroutine ends
}

type queuedExit struct {
	seq uint64
	r   ExitReport
}

func newExitQueue(log *zap.Logger) *exitQueue {
	return &exitQueue{log: log, cancel: func() {}}
}

// push queues r for the watcher (or the backlog).
func (q *exitQueue) push(r ExitReport) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	if len(q.items) >= MaxExitBacklog {
		k := 0
		if q.items[0].seq == q.sending {
			k = 1 // the report handed over and not acknowledged stays
		}
		q.dropped++
		q.log.Warn("exit backlog full; dropping the oldest report not in flight",
			zap.String("subject", q.items[k].r.Subject), zap.Uint64("instance", q.items[k].r.Instance),
			zap.Uint64("dropped", q.dropped))
		q.items = slices.Delete(q.items, k, k+1)
	}
	q.nextSeq++
	q.items = append(q.items, queuedExit{seq: q.nextSeq, r: r})
	q.signal()
}

func (q *exitQueue) signal() {
	if q.wake != nil {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// setWatcher replaces the watcher; it takes over the reference w.
func (q *exitQueue) setWatcher(w oomdpb.ExitWatcher) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		w.Release()
		return
	}
	q.cancel()
	q.gen++
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{}, 1)
	q.cancel, q.wake = cancel, wake
	q.signal()
	q.pushers.Add(1)
	go q.pushTo(ctx, q.gen, w, wake)
}

func (q *exitQueue) pushTo(ctx context.Context, gen uint64, w oomdpb.ExitWatcher, wake chan struct{}) {
	defer q.pushers.Done()
	defer w.Release()
	if q.pusherDone != nil {
		defer q.pusherDone()
	}
	for {
		q.mu.Lock()
		if q.gen != gen || q.closed {
			q.mu.Unlock()
			return
		}
		if len(q.items) == 0 {
			q.mu.Unlock()
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		head := q.items[0]
		q.sending = head.seq
		q.mu.Unlock()

		err := deliver(ctx, w, head.r)
		q.mu.Lock()
		if err != nil {
			// The report stays at the head for the next watcher, and stays protected
			// from the backlog's bound (sending): the watcher may have died holding it
			// (oomd answers once what the exit caused is durable).
			if q.gen == gen {
				q.log.Info("exit watcher gone; keeping reports for the next one",
					zap.String("subject", head.r.Subject), zap.Uint64("instance", head.r.Instance), zap.Error(err))
				q.wake = nil
			}
			q.mu.Unlock()
			return
		}
		if len(q.items) > 0 && q.items[0].seq == head.seq {
			q.items = q.items[1:]
		}
		if q.sending == head.seq {
			q.sending = 0
		}
		q.mu.Unlock()
	}
}

// deliver makes one exited() call and waits for its answer or ctx: a dead watcher must
// not keep this goroutine forever (capnp traps 1 and 5, docs/capnp-traps.md).
func deliver(ctx context.Context, w oomdpb.ExitWatcher, r ExitReport) error {
	fut, release := w.Exited(ctx, func(p oomdpb.ExitWatcher_exited_Params) error {
		rep, err := p.NewReport()
		if err != nil {
			return err
		}
		if err := rep.SetSubject(r.Subject); err != nil {
			return err
		}
		rep.SetInstance(r.Instance)
		rep.SetPid(r.Pid)
		rep.SetExitCode(r.ExitCode)
		rep.SetSignal(r.Signal)
		rep.SetKilled(r.Killed)
		rep.SetTerminated(r.Terminated)
		rep.SetDecision(r.Decision)
		return nil
	})
	defer release()
	select {
	case <-fut.Done():
		_, err := fut.Struct()
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close stops the pusher; reports still queued are dropped.
func (q *exitQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cancel()
	q.mu.Unlock()
	q.pushers.Wait()
}
