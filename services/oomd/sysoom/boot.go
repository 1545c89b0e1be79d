package sysoom

import (
	"errors"
	"fmt"
	"sync"
)

// Boot is this start's view of the record store: what the previous boot left (read
// once, at start) and how to record this boot's sequence. A nil *Store (or a nil *Boot)
// makes every write a no-op and the last reboot unknown, so oomd runs without a store.
type Boot struct {
	store *Store
	boot  uint64
	last  Record
	valid bool
	fresh bool

	mu       sync.Mutex // serialises this boot's writes
	complete bool       // the outcome was written: nothing may overwrite it
}

// StartBoot reads the record and durably counts this boot, marking the record reported:
// a reason is reported by exactly one start (the next one after it was written), and a
// later start reads it as already reported. A torn or corrupt record reads as no
// record; only an I/O error is returned.
func StartBoot(store *Store) (*Boot, error) {
	b := &Boot{store: store, boot: 1}
	if store == nil {
		return b, nil
	}
	rec, err := store.Read()
	switch {
	case errors.Is(err, ErrInvalid):
		rec = Record{}
	case err != nil:
		return nil, err
	default:
		b.boot = rec.LastBoot + 1
		b.valid = rec.State != StateNone
		b.fresh = b.valid && !rec.Reported
	}
	b.last = rec
	next := rec
	next.Reported = true
	next.LastBoot = b.boot
	if err := store.Write(next); err != nil {
		return nil, fmt.Errorf("count this boot: %w", err)
	}
	return b, nil
}

// Number is this boot's count (1 for the first start with this store).
func (b *Boot) Number() uint64 { return b.boot }

// LastReboot returns the reason the previous boot recorded. ok is false when there is
// none to report: no store, no record, a torn or corrupt one, or one an earlier start
// already reported. A record left in progress (the machine went down during the
// teardown) reads as not graceful.
func (b *Boot) LastReboot() (rec Record, ok bool) {
	if b == nil || !b.fresh {
		return Record{}, false
	}
	rec = b.last
	if rec.State == StateInProgress {
		rec.Graceful = false
	}
	return rec, true
}

// Marker is the console line reporting the last reboot, or "" when there is none.
func (b *Boot) Marker() string {
	rec, ok := b.LastReboot()
	if !ok {
		return ""
	}
	return fmt.Sprintf("oomd: last reboot reason=%s graceful=%t", rec.Reason, rec.Graceful)
}

// InProgress durably records that a halt was claimed for reason and the teardown is
// starting, so a machine that dies before the outcome still reads "reason, not
// graceful" on the next boot.
func (b *Boot) InProgress(reason Reason) error {
	return b.write(Record{State: StateInProgress, Reason: reason})
}

// Complete durably records the outcome, just before the reboot action.
func (b *Boot) Complete(reason Reason, graceful bool, teardownMs uint32, notStopped []string) error {
	return b.write(Record{State: StateComplete, Reason: reason, Graceful: graceful, TeardownMs: teardownMs, NotStopped: notStopped})
}

// write stamps r with this boot and writes it. Once the outcome (StateComplete) is
// written nothing replaces it: an InProgress whose fsync was slow (the bound does not
// wait for it) would otherwise land after the outcome, and the next boot would read
// "in progress" instead of what happened.
func (b *Boot) write(r Record) error {
	if b == nil || b.store == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.complete {
		return nil
	}
	b.complete = r.State == StateComplete
	r.BootCount, r.LastBoot = b.boot, b.boot
	return b.store.Write(r)
}
