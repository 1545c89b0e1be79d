package daemon

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"

	"capnproto.org/go/capnp/v3/rpc"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/oomd/kernel"
	"oomd.dev/oomd/services/oomd/policy"
)

// slot holds what one subject's connection reported since the last tick. The sink
// handler only stores into it (no allocation, no lock on the hot path); the tick loop
// drains it. However fast a sender reports, a slot is one value, one counter and one
// claimed id, and it is queued for draining at most once per tick: that is how memstat
// input stays bounded (security invariant 6).
type slot struct {
	subject    string
	subjectB   []byte
	instance   uint64
	critical   bool
	injectable bool
	preference policy.Preference // the manifest's victim preference
	conn       *rpc.Conn         // the brokered connection; its bootstrap is the child's TestHook
	coreSlot   uint32            // the core's handle for this subject (Core.SlotOf); loop only

	// Read on every tick, by the owner loop only (readings.go).
	kernel      *kernel.Reader // the kernel's count (nil: execd passed none)
	page        *page.Reader   // the memstat page (nil: the subject publishes over RPC)
	torn        uint64         // page reads skipped because every retry was torn
	tornRun     uint64         // consecutive ticks of them
	silentTicks uint64         // ticks its page was read and found never written

	bytes    atomic.Uint64
	accepted atomic.Uint64 // valid samples since the last drain (the latest wins)
	rejected atomic.Uint64 // samples claiming another subject, since the last drain
	queued   atomic.Bool   // already on the dirty list for the next tick

	mu      sync.Mutex
	claimed string // the last foreign claim seen since the last drain (<= 64 bytes)
}

// dirtyList collects slots with news for the next tick. A slot is appended only on its
// first report after a drain, so the list never holds more than one entry per subject.
type dirtyList struct {
	mu    sync.Mutex
	slots []*slot
}

func (d *dirtyList) mark(s *slot) {
	if s.queued.Swap(true) {
		return
	}
	d.mu.Lock()
	d.slots = append(d.slots, s)
	d.mu.Unlock()
}

// take swaps out the pending slots; buf is reused to avoid garbage every tick.
func (d *dirtyList) take(buf []*slot) []*slot {
	d.mu.Lock()
	out := d.slots
	d.slots = buf[:0]
	d.mu.Unlock()
	for _, s := range out {
		s.queued.Store(false)
	}
	return out
}

// sinkServer is the MemstatSink on one brokered connection, bound to the subject execd
// named for it. The payload's claimedSubject is compared, never trusted (invariant 2).
type sinkServer struct {
	slot  *slot
	dirty *dirtyList
}

var _ oomdpb.MemstatSink_Server = (*sinkServer)(nil)

func (s *sinkServer) Report(_ context.Context, call oomdpb.MemstatSink_report) error {
	sample, err := call.Args().Sample()
	if err != nil {
		return err
	}
	claimed, err := sample.ClaimedSubjectBytes()
	if err != nil {
		return err
	}
	sl := s.slot
	// The claim must name the connection's own subject exactly; anything else, an empty
	// claim included, is a rejection (the core and oom-policy.md say the same).
	if bytes.Equal(claimed, sl.subjectB) {
		sl.bytes.Store(sample.Bytes())
		sl.accepted.Add(1)
	} else {
		if sl.rejected.Add(1) == 1 {
			sl.mu.Lock()
			sl.claimed = truncate(string(claimed), 64)
			sl.mu.Unlock()
		}
	}
	s.dirty.mark(sl)
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
