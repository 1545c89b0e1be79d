package policy

import (
	"slices"
	"strings"
)

// subject is the per-instance state of one registered subject. It lives in a slot of
// table.slots; slots are reused after an exit so the table's memory is bounded by the
// peak number of live subjects, not by the number ever registered.
type subject struct {
	id       string
	instance uint64
	critical bool       // the manifest said so at registration; the policy may add more
	pref     Preference // the manifest's victim preference; the policy may override it

	soft, hard uint64 // effective limits under the current policy
	signal     Signal // which reading the limits apply to, under the current policy

	bytes     uint64 // the enforced reading as of the last evaluation
	coop      uint64 // the latest published value (published)
	kernel    uint64 // the latest kernel reading (hasKernel)
	published bool
	hasKernel bool

	underTicks    uint64 // consecutive evaluations with kernel > coop + margin
	underReported bool   // memstatUnderReported was emitted for this episode
	kernelFailed  bool   // kernelReadFailed was emitted for this episode
	kernelErr     string // the failure waiting for the next evaluation
	invalid       bool   // memstatInvalid was emitted for this episode

	aboveSoft bool   // softExceeded was emitted for the current upward crossing
	denied    bool   // killDenied (or wouldKill, under a dry run) was emitted for the current crossing of hard
	dryRun    bool   // the effective dry run of the policy for this subject
	decided   bool   // this instance already had its one kill decision
	decision  uint64 // the live decision of this instance, 0 if none
	requested bool   // that decision's terminate request was sent

	wouldKill uint64 // victim episode in which victimWouldKill named it (0: never)

	rejected   uint64 // samples that claimed another subject
	rejectTick uint64 // tick+1 of the last memstatRejected event, to rate-limit them
}

// hot is the part of a slot the sample path writes, kept in its own dense array
// (48 bytes a slot) so a sample touches one small cache line, not the whole subject:
// that keeps the per-sample cost flat from 10 to 100 000 subjects. With a slot handle
// (Input.Slot) the sample path touches nothing else: no map probe.
type hot struct {
	id         string // copy of subject.id, to check a caller's slot handle ("" = free)
	instance   uint64 // copy of subject.instance, for the stale-instance check
	pending    uint64 // latest sample since the last tick (valid when hasPending)
	hasPending bool
	kernel     uint64 // latest kernel reading, as last stepped (valid when hasKernel)
	hasKernel  bool
	// kernelNew: a kernel reading (or failure) to apply at the next tick. watch: the
	// subject is counting ticks of an under-report gap, so an unchanged reading is
	// still evaluated every tick.
	kernelNew bool
	watch     bool
	// dirty means "this slot is in table.dirty". It is deliberately not cleared when a
	// slot is freed or reused, because the slot index is still in the list; the tick
	// skips slots that have nothing pending.
	dirty bool
}

// due reports whether the slot has something to evaluate at this tick.
func (h *hot) due() bool { return h.hasPending || h.kernelNew }

func (s *subject) state() SubjectState {
	switch {
	case s.requested:
		return StateTerminating
	case s.decision != 0 || s.bytes > s.hard:
		return StateHard
	case s.bytes > s.soft:
		return StateSoft
	}
	return StateNormal
}

// table holds the subjects. index is for lookup only; every ordered walk uses order,
// the slot numbers sorted by subject id, so nothing depends on map iteration order.
type table struct {
	slots []subject
	hot   []hot // parallel to slots
	index map[string]uint32
	order []uint32 // live slots sorted by id
	free  []uint32 // reusable slots
	dirty []uint32 // slots with a sample since the last tick (may hold stale entries)
}

func newTable() table {
	return table{index: make(map[string]uint32)}
}

func (t *table) len() int { return len(t.order) }

// find returns id's live slot, trying the caller's handle (slot+1, 0 = none) first.
// The handle is trusted only if the slot it names holds id right now.
func (t *table) find(handle uint32, id string) (uint32, bool) {
	if handle != 0 && int(handle) <= len(t.hot) {
		if h := &t.hot[handle-1]; h.id == id && id != "" {
			return handle - 1, true
		}
	}
	i, ok := t.index[id]
	return i, ok
}

func (t *table) lookup(id string) (*subject, uint32, bool) {
	i, ok := t.index[id]
	if !ok {
		return nil, 0, false
	}
	return &t.slots[i], i, true
}

// orderPos is where id is (or would be) in order.
func (t *table) orderPos(id string) (int, bool) {
	return slices.BinarySearchFunc(t.order, id, func(slot uint32, id string) int {
		return strings.Compare(t.slots[slot].id, id)
	})
}

// add creates a live subject with a fresh state and returns its slot. The caller has
// checked that id is not present and that the table is below MaxSubjects, and sets
// the instance with setInstance.
func (t *table) add(id string) (*subject, uint32) {
	var i uint32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		t.slots = append(t.slots, subject{})
		t.hot = append(t.hot, hot{})
		i = uint32(len(t.slots) - 1)
	}
	s := &t.slots[i]
	*s = subject{id: id}
	t.hot[i] = hot{id: id, dirty: t.hot[i].dirty}
	t.index[id] = i
	// Inserting keeps order sorted at O(log n) compares plus one memmove of 4-byte slot
	// numbers: cheap at MaxSubjects, and registrations are rare next to samples.
	pos, _ := t.orderPos(id)
	t.order = slices.Insert(t.order, pos, i)
	return s, i
}

// remove frees the slot of a live subject.
func (t *table) remove(i uint32) {
	s := &t.slots[i]
	if pos, ok := t.orderPos(s.id); ok {
		t.order = slices.Delete(t.order, pos, pos+1)
	}
	delete(t.index, s.id)
	*s = subject{}
	t.hot[i] = hot{dirty: t.hot[i].dirty}
	t.free = append(t.free, i)
}

func (t *table) setInstance(i uint32, instance uint64) {
	t.slots[i].instance = instance
	t.hot[i].instance = instance
}

// markDirty queues slot i for evaluation at the next tick, at most once per tick, so
// the list is bounded by the number of subjects however many samples arrive.
func (t *table) markDirty(h *hot, i uint32) {
	if !h.dirty {
		h.dirty = true
		t.dirty = append(t.dirty, i)
	}
}

// takeDirty returns the slots to evaluate this tick in subject-id order and resets the
// dirty list. all forces every live subject (after a policy change). The returned
// slice is only valid until the next call.
func (t *table) takeDirty(all bool, scratch []uint32) []uint32 {
	out := scratch[:0]
	// Walking the sorted order is O(n); sorting the dirty list is O(d log d) string
	// compares. Both give the same order, so pick the cheaper one.
	if all || len(t.dirty)*16 >= len(t.order) {
		for _, i := range t.dirty {
			t.hot[i].dirty = false
		}
		for _, i := range t.order {
			if all || t.hot[i].due() {
				out = append(out, i)
			}
		}
	} else {
		for _, i := range t.dirty {
			h := &t.hot[i]
			if h.dirty && h.due() {
				out = append(out, i)
			}
			// Clearing here also drops duplicates (a slot reused within one tick).
			h.dirty = false
		}
		slices.SortFunc(out, func(a, b uint32) int {
			return strings.Compare(t.slots[a].id, t.slots[b].id)
		})
	}
	t.dirty = t.dirty[:0]
	return out
}
