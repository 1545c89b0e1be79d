package daemon

import "oomd.dev/oomd/services/oomd/policy"

// wallStamps remembers when each event still in the core's ring was published. The core
// reads no clock, so the wall time of an event lives here, in the shell, in a ring of
// the same capacity indexed the same way; an entry whose seq does not match was
// overwritten (or never stamped) and reads as 0, "unknown".
type wallStamps struct {
	seq []uint64
	ns  []int64
}

func newWallStamps(capacity int) wallStamps {
	if capacity <= 0 {
		capacity = policy.DefaultRingSize
	}
	return wallStamps{seq: make([]uint64, capacity), ns: make([]int64, capacity)}
}

func (w *wallStamps) put(seq uint64, ns int64) {
	i := seq % uint64(len(w.seq))
	w.seq[i], w.ns[i] = seq, ns
}

// stamp fills in WallTimeNs of evs (copies the caller owns).
func (w *wallStamps) stamp(evs []policy.Event) {
	for k := range evs {
		if i := evs[k].Seq % uint64(len(w.seq)); w.seq[i] == evs[k].Seq {
			evs[k].WallTimeNs = w.ns[i]
		}
	}
}
