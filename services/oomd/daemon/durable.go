package daemon

import (
	"context"
	"slices"
)

// Waiting for durability. Work that must not be answered before the audit records it
// caused are durable registers a wait on the loop; the loop settles the waits after
// every turn, since any answer it stepped (an audit ack, a spill, execd's answer to a
// terminate request) may have moved them. Two use it: execd's exit reports
// (exitWatcher.Exited answers only then, so execd, which keeps an unanswered report for
// the next watcher, hands a report whose consequences a crash lost to the next oomd) and
// the reboot, which waits a grace for its outcome's record.

// durableWait is one wait: done is closed once audit record seq is durable. An exit
// whose kill decision is still open (it came before execd's answer to the terminate
// request, which ends the decision) waits for that decision first: subject and instance
// name it, and seq is set when it ends.
type durableWait struct {
	seq      uint64
	done     chan struct{}
	subject  string
	instance uint64
}

// durableWaits are the waits not yet over, in no particular order. Loop only.
type durableWaits []durableWait

// closedDone is the answer of a wait that is over before it began.
var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// afterDurable returns a channel closed once audit record seq is durable. Loop only.
func (d *Daemon) afterDurable(seq uint64) <-chan struct{} {
	if seq <= d.core.AuditDurable() {
		return closedDone
	}
	c := make(chan struct{})
	d.durable = append(d.durable, durableWait{seq: seq, done: c})
	return c
}

// afterDecision returns a channel closed once the open kill decision about that
// instance has ended and every record produced by then is durable. Loop only.
func (d *Daemon) afterDecision(subject string, instance uint64) <-chan struct{} {
	c := make(chan struct{})
	d.durable = append(d.durable, durableWait{done: c, subject: subject, instance: instance})
	return c
}

// settleDurable ends the waits that are over. Loop only, after every turn.
func (d *Daemon) settleDurable() {
	if len(d.durable) == 0 {
		return
	}
	for i := range d.durable {
		w := &d.durable[i]
		if w.subject != "" && !d.core.DecisionOpen(w.subject, w.instance) {
			w.seq, w.subject = d.core.AuditProduced(), ""
		}
	}
	durable := d.core.AuditDurable()
	d.durable = slices.DeleteFunc(d.durable, func(w durableWait) bool {
		if w.subject != "" || w.seq > durable {
			return false
		}
		close(w.done)
		return true
	})
}

// awaitDurable waits for a channel from afterDurable or afterDecision. It fails when
// ctx ends or the loop stopped first: then the records may never become durable in
// this run. A wait given up is forgotten, so that waits nobody waits for do not pile up
// while logd is down.
func (d *Daemon) awaitDurable(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = d.do(func() {
			d.durable = slices.DeleteFunc(d.durable, func(w durableWait) bool { return w.done == done })
		})
		return ctx.Err()
	case <-d.stopped:
		select {
		case <-done:
			return nil
		default:
			return errStopped
		}
	}
}
