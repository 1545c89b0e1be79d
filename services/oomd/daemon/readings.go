package daemon

import (
	"slices"
	"strings"

	"go.uber.org/zap"

	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/oomd/policy"
)

// Readings taken on every tick, in subject order, before the core's tick: each
// subject's memstat page (a few loads, no syscall) and the kernel's count (one pread,
// plus memory.stat above the soft limit). Both enter the core as inputs, so a trace of
// them replays the daemon's decisions byte for byte.

// tornTicks is how many consecutive ticks a page must read torn before it is reported.
const tornTicks = 3

// silentTicks is how many ticks a subject's page may stay unwritten before that is
// reported (memstatInvalid, ReasonNeverPublished), once per instance.
const silentTicks = 50

// ReasonNeverPublished is memstatInvalid's reason for a page never written.
const ReasonNeverPublished = "never published: watched on the kernel's count alone"

// addLive inserts s into the sorted live list (loop only).
func (d *Daemon) addLive(s *slot) {
	i, _ := slices.BinarySearchFunc(d.live, s.subject, func(x *slot, id string) int { return strings.Compare(x.subject, id) })
	d.live = slices.Insert(d.live, i, s)
}

// dropLive removes s from the live list and closes its readers (loop only: the tick
// reads them on the loop, so nothing reads a closed fd).
func (d *Daemon) dropLive(s *slot) {
	d.live = slices.DeleteFunc(d.live, func(x *slot) bool { return x == s })
	s.closeReaders()
}

// closeReaders closes the subject's kernel reading and page mapping.
func (s *slot) closeReaders() {
	if s.kernel != nil {
		s.kernel.Close()
		s.kernel = nil
	}
	if s.page != nil {
		s.page.Close()
		s.page = nil
	}
}

// readAll steps one page sample (when the page has news) and one kernel reading per
// live subject (loop only).
func (d *Daemon) readAll() {
	for _, s := range d.live {
		if s.page != nil {
			d.readPage(s)
		}
		if s.kernel != nil {
			v, err := s.kernel.Read(d.core.SoftLimit(s.coreSlot, s.subject))
			in := policy.Input{Kind: policy.InputKernel, Subject: s.subject, Instance: s.instance, Slot: s.coreSlot, Bytes: v}
			if err != nil {
				in.Bytes, in.Reason = 0, truncate(err.Error(), 200)
				d.stats.kernelFailed++
			}
			if d.core.KernelUnchanged(&in) {
				continue // the core would ignore it: not stepped, not traced
			}
			d.feed(in)
		}
	}
}

func (d *Daemon) readPage(s *slot) {
	smp, st := s.page.Read()
	if st != page.Torn {
		s.tornRun = 0
	}
	if st == page.NeverWritten {
		// A subject that never publishes is watched on the kernel's count alone: said
		// once (the core reports an episode once), after silentTicks ticks.
		if s.silentTicks++; s.silentTicks == silentTicks {
			d.feed(policy.Input{Kind: policy.InputMemstatInvalid, Subject: s.subject, Instance: s.instance, Reason: ReasonNeverPublished})
		}
	}
	switch st {
	case page.OK:
		d.feed(policy.Input{Kind: policy.InputSample, Subject: s.subject, Instance: s.instance, Claimed: s.subject, Bytes: smp.Bytes, Slot: s.coreSlot})
	case page.Unchanged, page.NeverWritten, page.Closed:
	case page.Torn:
		// A publisher pre-empted mid-write tears a read now and then: skip the sample
		// (the last good value stays in force) and report only a run of torn ticks.
		s.torn++
		s.tornRun++
		d.stats.pageFailed[st]++
		if s.torn&(s.torn-1) == 0 { // 1, 2, 4, 8, ...: a log line, never a flood
			d.log.Warn("memstat page torn on every retry; sample skipped", zap.String("subject", s.subject), zap.Uint64("times", s.torn))
		}
		if s.tornRun >= tornTicks {
			d.feed(policy.Input{Kind: policy.InputMemstatInvalid, Subject: s.subject, Instance: s.instance, Reason: "torn"})
		}
	default: // BadMagic, BadVersion: the subject wrote over the header
		if int(st) < len(d.stats.pageFailed) {
			d.stats.pageFailed[st]++
		}
		d.feed(policy.Input{Kind: policy.InputMemstatInvalid, Subject: s.subject, Instance: s.instance, Reason: st.String()})
	}
}
