package tracelog

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"oomd.dev/oomd/services/oomd/policy"
)

// Chain reads the files of one run, oldest first: the run of the newest file in dir, or
// the run of path when it names a file. Files of the run that rotation deleted are
// simply not there; the chain starts at the oldest one left.
func Chain(path string) ([]*File, error) {
	dir, run := path, int64(-1)
	if strings.HasSuffix(path, ".otr") {
		f, err := ReadFile(path)
		if err != nil {
			return nil, err
		}
		dir, run = filepath.Dir(path), f.Header.Run
	}
	names, err := List(dir)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("trace: no trace files in %s", dir)
	}
	var files []*File
	for _, n := range names {
		f, err := ReadFile(filepath.Join(dir, n))
		if err != nil {
			if run < 0 && n == names[len(names)-1] {
				return nil, fmt.Errorf("trace: %s: %w", n, err)
			}
			continue // another run's, or damaged before its first input: not part of the chain
		}
		if run < 0 {
			files = append(files, f)
		} else if f.Header.Run == run {
			files = append(files, f)
		}
	}
	if run < 0 {
		run = files[len(files)-1].Header.Run
		files = slices.DeleteFunc(files, func(f *File) bool { return f.Header.Run != run })
	}
	return files, nil
}

// Replay restores the first file's state and steps every input of the chain, exactly
// as the daemon did. It returns the events the core emitted, in order: byte for byte the
// daemon's (their seqs and ticks included). Each later file's state must equal the
// replayed core's at that point, or the chain is broken (a file missing in between, or
// damage) and Replay says where.
func Replay(files []*File) ([]policy.Event, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("replay: no trace")
	}
	c, err := policy.Restore(files[0].State)
	if err != nil {
		return nil, fmt.Errorf("replay: %s: %w", FileName(files[0].Header.Run, files[0].Header.File), err)
	}
	var events []policy.Event
	for k, f := range files {
		if k > 0 {
			st, err := c.State()
			if err != nil {
				return events, err
			}
			want := f.State
			want.EventBase = st.EventBase // a restored ring holds no earlier events
			if !statesEqual(st, want) {
				return events, fmt.Errorf("replay: %s does not continue %s (a file is missing or damaged)",
					FileName(f.Header.Run, f.Header.File), FileName(files[k-1].Header.Run, files[k-1].Header.File))
			}
		}
		for _, in := range f.Inputs {
			_ = c.Step(in) // a refused input was refused live too; it changes nothing
			events = append(events, c.Ready().Events...)
			c.Advance()
		}
		if f.Damage != "" && k < len(files)-1 {
			return events, fmt.Errorf("replay: %s is damaged (%s) and is not the last file", FileName(f.Header.Run, f.Header.File), f.Damage)
		}
	}
	return events, nil
}

func statesEqual(a, b policy.State) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

// WhatIf replays the chain with pol in force from its first input instead of the
// policies the daemon had, and returns the events of that run. The trace holds the
// world's answers to the real run's decisions, so the alternative run is a model: its
// audit records are acknowledged at once, execd accepts every terminate it asks for,
// subjects exit when they really exited (a subject killed in reality exits there too),
// and recorded policy changes, acknowledgements and execd answers are left out. Kernel
// readings the daemon left out because its core ignored them are put back (rereads).
func WhatIf(files []*File, pol policy.Policy) ([]policy.Event, error) {
	if len(files) == 0 {
		return nil, fmt.Errorf("what-if: no trace")
	}
	if err := pol.Validate(); err != nil {
		return nil, fmt.Errorf("what-if: %w", err)
	}
	st := files[0].State
	st.Policy = pol
	st.ReevalAll = true // every subject is judged under pol at the first tick
	c, err := policy.Restore(st)
	if err != nil {
		return nil, fmt.Errorf("what-if: %w", err)
	}
	re := newRereads(st)
	var events []policy.Event
	drain := func() {
		for c.HasReady() {
			rd := c.Ready()
			events = append(events, rd.Events...)
			terms := slices.Clone(rd.Terminate)
			c.Advance()
			_ = c.Step(policy.Input{Kind: policy.InputAuditAck, Seq: c.AuditProduced()})
			for _, t := range terms {
				_ = c.Step(policy.Input{Kind: policy.InputTerminateAck, Decision: t.Decision})
			}
		}
	}
	for _, f := range files {
		for _, in := range f.Inputs {
			switch in.Kind {
			case policy.InputPolicy, policy.InputAuditAck, policy.InputAuditSpilled, policy.InputTerminateAck, policy.InputTerminateRefused:
				continue
			case policy.InputExited:
				in.Decision = 0 // the real run's decision ids mean nothing here
			case policy.InputTick:
				for _, r := range re.missing() {
					_ = c.Step(r)
					drain()
				}
			}
			re.saw(&in)
			_ = c.Step(in)
			drain()
		}
	}
	return events, nil
}

// rereads puts back the kernel readings the daemon did not step. It reads every subject
// on every tick but steps only the readings its core would not ignore
// (policy.Core.KernelUnchanged: the same value as the last, while no under-report gap
// is being counted). Under another policy a gap may be counted where the real run
// counted none, and then every tick's reading matters; so before each tick, each
// subject with no reading in the trace for that tick gets its last good one again. Under
// the recorded policy this changes nothing: the core ignores them, as it did live.
type rereads struct {
	subjects []reread // by subject id
	out      []policy.Input
}

type reread struct {
	last policy.Input // the subject's last good reading
	read bool         // it had a reading (good or failed) this tick
}

// newRereads starts from the readings the trace's first State holds.
func newRereads(st policy.State) *rereads {
	r := &rereads{}
	for _, s := range st.Subjects {
		if s.HotHasKernel {
			r.saw(&policy.Input{Kind: policy.InputKernel, Subject: s.ID, Instance: s.Instance, Bytes: s.HotKernel})
		}
	}
	return r
}

// saw follows in: a reading (kept when good), or a subject that left or came back as
// another instance (its reading is dropped; the daemon steps the new one's first).
func (r *rereads) saw(in *policy.Input) {
	i, ok := slices.BinarySearchFunc(r.subjects, in.Subject, func(s reread, id string) int { return cmp.Compare(s.last.Subject, id) })
	switch {
	case in.Kind == policy.InputKernel && ok:
		if in.Reason == "" {
			r.subjects[i].last = *in
		}
		r.subjects[i].read = true
	case in.Kind == policy.InputKernel && in.Reason == "":
		r.subjects = slices.Insert(r.subjects, i, reread{last: *in, read: true})
	case ok && in.Kind == policy.InputRegister && r.subjects[i].last.Instance != in.Instance,
		ok && in.Kind == policy.InputExited && r.subjects[i].last.Instance == in.Instance:
		r.subjects = slices.Delete(r.subjects, i, i+1)
	}
}

// missing returns the readings to put back before a tick, and starts the next tick.
func (r *rereads) missing() []policy.Input {
	r.out = r.out[:0]
	for i := range r.subjects {
		if !r.subjects[i].read {
			r.out = append(r.out, r.subjects[i].last)
		}
		r.subjects[i].read = false
	}
	return r.out
}

// Decision is one decision-like event, as Diff compares them.
type Decision struct {
	Tick    uint64
	Kind    policy.EventKind
	Subject string
}

// decisionKinds are the events Diff compares: what a policy decides.
var decisionKinds = []policy.EventKind{policy.EventKillDecided, policy.EventKillDenied, policy.EventKillThrottled,
	policy.EventWouldKill, policy.EventVictimWouldKill, policy.EventHaltClaimed}

// Diff returns the decisions only the actual run made and those only the other made,
// each in tick order.
func Diff(actual, other []policy.Event) (onlyActual, onlyOther []Decision) {
	count := func(evs []policy.Event) map[Decision]int {
		m := map[Decision]int{}
		for _, e := range evs {
			if slices.Contains(decisionKinds, e.Kind) {
				m[Decision{e.Tick, e.Kind, e.Subject}]++
			}
		}
		return m
	}
	a, o := count(actual), count(other)
	for d, n := range a {
		for range n - min(n, o[d]) {
			onlyActual = append(onlyActual, d)
		}
	}
	for d, n := range o {
		for range n - min(n, a[d]) {
			onlyOther = append(onlyOther, d)
		}
	}
	order := func(x, y Decision) int {
		return cmp.Or(cmp.Compare(x.Tick, y.Tick), cmp.Compare(x.Subject, y.Subject), cmp.Compare(x.Kind, y.Kind))
	}
	slices.SortFunc(onlyActual, order)
	slices.SortFunc(onlyOther, order)
	return onlyActual, onlyOther
}
