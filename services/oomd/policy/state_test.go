package policy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runFrom steps inputs through c and renders what each step produced (FormatReady, or
// the error), Advancing after each.
func runFrom(c *Core, inputs []Input) []string {
	out := make([]string, len(inputs))
	for i, in := range inputs {
		if err := c.Step(in); err != nil {
			out[i] = "error: " + err.Error() + "\n"
		}
		out[i] += FormatReady(c.Ready())
		c.Advance()
	}
	return out
}

// genInputs draws an input sequence with the fuzzer's generator (acks and answers aimed
// at what the core produced), recording it as it goes.
func genInputs(t *testing.T, cfg Config, data []byte) []Input {
	c, err := New(cfg)
	require.NoError(t, err)
	chk := newChecker(c, cfg)
	g := &fuzzGen{data: data, chk: chk}
	var inputs []Input
	for {
		in, ok := g.next()
		if !ok {
			return inputs
		}
		_, _, err := chk.step(in)
		require.NoError(t, err)
		inputs = append(inputs, in)
	}
}

// checkRestoreAt takes the state after inputs[:k] through JSON (as a trace file holds
// it), restores it, and requires the rest of the run to produce exactly what the
// uninterrupted core produced.
func checkRestoreAt(t *testing.T, cfg Config, inputs []Input, want []string, k int) {
	t.Helper()
	c, err := New(cfg)
	require.NoError(t, err)
	runFrom(c, inputs[:k])
	st, err := c.State()
	require.NoError(t, err)
	raw, err := json.Marshal(st)
	require.NoError(t, err)
	var back State
	require.NoError(t, json.Unmarshal(raw, &back))
	r, err := Restore(back)
	require.NoError(t, err, "restore at step %d", k)
	got := runFrom(r, inputs[k:])
	for i := range got {
		require.Equal(t, want[k+i], got[i], "restored after step %d: step %d %s differs", k, k+i, FormatInput(inputs[k+i]))
	}
	st2, err := r.State()
	require.NoError(t, err)
	runFrom(c, inputs[k:])
	st3, err := c.State()
	require.NoError(t, err)
	st2.EventBase = st3.EventBase // by design: a restored ring holds no earlier events
	require.Equal(t, st3, st2, "restored after step %d: the two cores end in different states", k)
}

// TestStateRestoreContinuesIdentically: a core restored from its State at any step
// continues exactly as the original: the FuzzStep seeds and 300 generated runs,
// restored at every step (seeds) or at 8 steps each (generated).
func TestStateRestoreContinuesIdentically(t *testing.T) {
	cfg := Config{Policy: fuzzPolicies[0], RingSize: 8}
	rng := rand.New(rand.NewPCG(1, 2))
	var runs [][]byte
	for range 300 {
		data := make([]byte, 3*(20+rng.IntN(300)))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		runs = append(runs, data)
	}
	for n, data := range runs {
		inputs := genInputs(t, cfg, data)
		c, err := New(cfg)
		require.NoError(t, err)
		want := runFrom(c, inputs)
		for j := range 8 {
			k := min(len(inputs), j*len(inputs)/8+n%max(1, len(inputs)/8))
			checkRestoreAt(t, cfg, inputs, want, k)
		}
	}
}

// TestRestoreRefusesBadState: a damaged snapshot is refused whole, naming what is wrong.
func TestRestoreRefusesBadState(t *testing.T) {
	c, err := New(Config{Policy: fuzzPolicies[0]})
	require.NoError(t, err)
	require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: "hog", Instance: 1}))
	c.Ready()
	c.Advance()
	good, err := c.State()
	require.NoError(t, err)
	for name, edit := range map[string]func(*State){
		"version":     func(s *State) { s.Version = 99 },
		"policy":      func(s *State) { s.Policy.HardBytes = 0 },
		"subject id":  func(s *State) { s.Subjects[0].ID = "no/slash" },
		"unsorted":    func(s *State) { s.Subjects = append(s.Subjects, s.Subjects[0]) },
		"decision":    func(s *State) { s.Decisions = []DecisionRecord{{ID: 5, Subject: "hog"}} },
		"acked > seq": func(s *State) { s.AuditAcked = s.AuditSeq + 1 },
		"level":       func(s *State) { s.System.Level = 9 },
		"ring size":   func(s *State) { s.RingSize = -1 },
	} {
		st := good
		st.Subjects = append([]SubjectRecord(nil), good.Subjects...)
		edit(&st)
		_, err := Restore(st)
		assert.Error(t, err, name)
	}
	c.Step(Input{Kind: InputRegister, Subject: "b", Instance: 1})
	_, err = c.State()
	assert.ErrorIs(t, err, ErrOutputPending)
}

// TestStateCoversEveryField: a field added to the core's state must be added to State
// (state.go) or, if it is derived from the policy, to the derived list here. The counts
// are of the structs' fields.
func TestStateCoversEveryField(t *testing.T) {
	for typ, n := range map[reflect.Type]int{
		reflect.TypeFor[subject]():  26, // 22 in SubjectRecord + soft, hard, signal, dryRun (derived)
		reflect.TypeFor[hot]():      9,  // 6 in SubjectRecord + id, instance (the subject's), dirty (rebuilt)
		reflect.TypeFor[decision](): 12,
		reflect.TypeFor[system]():   8,
		reflect.TypeFor[halt]():     8,
		reflect.TypeFor[victims]():  5,
		reflect.TypeFor[Core]():     30, // see State; maps and scratch are derived, output slices must be empty
	} {
		assert.Equal(t, n, typ.NumField(), "%s has a field State does not know: add it to state.go (or here, if derived)", typ)
	}
}

// rereadEachTick makes a generated run read the kernel the way the daemon does: before
// every tick, each subject's last reading comes again (as the shell reads every subject
// on every tick, and mostly finds the same count).
func rereadEachTick(inputs []Input) []Input {
	last := make([]*Input, len(fuzzSubjects))
	var out []Input
	for _, in := range inputs {
		if in.Kind == InputTick {
			for _, k := range last {
				if k != nil {
					out = append(out, *k)
				}
			}
		}
		if in.Kind == InputKernel {
			if i := slices.Index(fuzzSubjects, in.Subject); i >= 0 {
				k := in
				last[i] = &k
			}
		}
		out = append(out, in)
	}
	return out
}

// TestSkippingUnchangedKernelReadingsChangesNothing: a shell that leaves out every
// kernel reading KernelUnchanged calls unchanged (as the daemon does) drives the core
// to exactly the outputs and state of one that steps them all. Over 300 generated runs
// whose subjects are read again before every tick.
func TestSkippingUnchangedKernelReadingsChangesNothing(t *testing.T) {
	cfg := Config{Policy: fuzzPolicies[0], RingSize: 8}
	rng := rand.New(rand.NewPCG(3, 4))
	skipped, kernel := 0, 0
	for range 300 {
		data := make([]byte, 3*(20+rng.IntN(300)))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		inputs := rereadEachTick(genInputs(t, cfg, data))
		all, err := New(cfg)
		require.NoError(t, err)
		some, err := New(cfg)
		require.NoError(t, err)
		for _, in := range inputs {
			if in.Kind == InputKernel {
				kernel++
			}
			skip := some.KernelUnchanged(&in)
			errAll := all.Step(in)
			if skip {
				skipped++
				require.NoError(t, errAll, FormatInput(in))
				require.False(t, all.HasReady(), "an input called unchanged produced output: %s", FormatInput(in))
				continue
			}
			require.Equal(t, fmt.Sprint(errAll), fmt.Sprint(some.Step(in)), FormatInput(in))
			require.Equal(t, all.HasReady(), some.HasReady(), FormatInput(in))
			if all.HasReady() {
				require.Equal(t, FormatReady(all.Ready()), FormatReady(some.Ready()), FormatInput(in))
				all.Advance()
				some.Advance()
			}
		}
		sa, err := all.State()
		require.NoError(t, err)
		ss, err := some.State()
		require.NoError(t, err)
		require.Equal(t, sa, ss, "the cores end in different states")
	}
	t.Logf("%d of %d kernel readings skipped", skipped, kernel)
	require.Positive(t, skipped, "the runs hold no unchanged reading: the test proves nothing")
}

// TestKernelUnchangedOnlyForSameReadings: what is never skipped.
func TestKernelUnchangedOnlyForSameReadings(t *testing.T) {
	c, err := New(Config{Policy: fuzzPolicies[0]})
	require.NoError(t, err)
	require.NoError(t, c.Step(Input{Kind: InputRegister, Subject: "hog", Instance: 1}))
	slot := c.SlotOf("hog")
	read := Input{Kind: InputKernel, Subject: "hog", Instance: 1, Slot: slot, Bytes: 100}
	assert.False(t, c.KernelUnchanged(&read), "the first reading")
	require.NoError(t, c.Step(read))
	assert.True(t, c.KernelUnchanged(&read), "the same reading again")
	for name, in := range map[string]Input{
		"another value":    {Kind: InputKernel, Subject: "hog", Instance: 1, Slot: slot, Bytes: 101},
		"a failed read":    {Kind: InputKernel, Subject: "hog", Instance: 1, Slot: slot, Reason: "EIO"},
		"another instance": {Kind: InputKernel, Subject: "hog", Instance: 2, Slot: slot, Bytes: 100},
		"unknown subject":  {Kind: InputKernel, Subject: "other", Instance: 1, Bytes: 100},
		"not a reading":    {Kind: InputSample, Subject: "hog", Instance: 1, Slot: slot, Bytes: 100},
	} {
		assert.False(t, c.KernelUnchanged(&in), name)
	}
	// After a failed read, the same good value again ends the failure episode: stepped.
	require.NoError(t, c.Step(Input{Kind: InputKernel, Subject: "hog", Instance: 1, Slot: slot, Reason: "EIO"}))
	require.NoError(t, c.Step(Input{Kind: InputTick}))
	assert.False(t, c.KernelUnchanged(&read), "the first good reading after a failure")
}
