package policy

// ring is the bounded event history. Its capacity is fixed at construction so a busy or
// hostile system can only overwrite old events, never grow memory; readers learn that
// they fell behind through the missed count instead of silently skipping.
type ring struct {
	buf     []Event
	base    uint64 // seqs up to base belong to earlier oomd runs (Config.EventSeqBase)
	lastSeq uint64 // seq of the newest event; base when nothing was written in this run
}

func newRing(capacity int, base uint64) ring {
	return ring{buf: make([]Event, capacity), base: base, lastSeq: base}
}

// push stores ev under the next seq and returns it as stored.
func (r *ring) push(ev Event) Event {
	r.lastSeq++
	ev.Seq = r.lastSeq
	r.buf[(r.lastSeq-1)%uint64(len(r.buf))] = ev
	return ev
}

// len is the number of events currently held.
func (r *ring) len() int {
	if n := r.lastSeq - r.base; n < uint64(len(r.buf)) {
		return int(n)
	}
	return len(r.buf)
}

// firstSeq is the seq of the oldest event still held (lastSeq+1 when empty).
func (r *ring) firstSeq() uint64 {
	return r.lastSeq - uint64(r.len()) + 1
}

// read returns up to limit events with seq > since, oldest first, in a fresh slice the
// caller owns. next is the since to pass on the following call; missed counts events
// after since that were already overwritten (they are skipped, and next moves past
// them, so a slow reader is told once, not on every call). A since from an earlier run
// (below base) counts the numbers base-since as missed too: those events are gone with
// that run (some of the numbers may never have been used, see Config.EventSeqBase).
func (r *ring) read(since uint64, limit int) (evs []Event, next, missed uint64) {
	if since >= r.lastSeq {
		// Nothing newer. A since from the future (a reader that outlived an oomd
		// restart) is pulled back to lastSeq so it sees the new run's later events.
		return nil, min(since, r.lastSeq), 0
	}
	first := r.firstSeq()
	from := since + 1
	if from < first {
		missed = first - from
		from = first
	}
	next = from - 1
	if limit <= 0 {
		return nil, next, missed
	}
	n := min(uint64(limit), r.lastSeq-from+1)
	evs = make([]Event, 0, n)
	for seq := from; seq < from+n; seq++ {
		evs = append(evs, r.buf[(seq-1)%uint64(len(r.buf))])
	}
	return evs, from + n - 1, missed
}
