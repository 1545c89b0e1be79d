package tracelog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/policy"
)

func testPolicy() policy.Policy {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes, p.KillBudget, p.KillWindowTicks = 100, 200, 1, 100
	return p
}

// scenario is a small run: two hogs cross hard, one is throttled, acks and exits.
func scenario() []policy.Input {
	in := []policy.Input{
		{Kind: policy.InputRegister, Subject: "a", Instance: 1},
		{Kind: policy.InputRegister, Subject: "b", Instance: 1},
		{Kind: policy.InputRegister, Subject: "c", Instance: 1},
	}
	for tick := range 40 {
		in = append(in, policy.Input{Kind: policy.InputSample, Subject: "a", Instance: 1, Claimed: "a", Bytes: uint64(50 + 10*tick)},
			policy.Input{Kind: policy.InputSample, Subject: "b", Instance: 1, Claimed: "b", Bytes: uint64(300 - 5*tick)},
			// c swings across its soft limit all run long: events in every file.
			policy.Input{Kind: policy.InputSample, Subject: "c", Instance: 1, Claimed: "c", Bytes: uint64(80 + 40*(tick%2))},
			policy.Input{Kind: policy.InputTick})
		switch tick {
		case 5:
			in = append(in, policy.Input{Kind: policy.InputAuditAck, Seq: 1})
		case 6:
			in = append(in, policy.Input{Kind: policy.InputTerminateAck, Decision: 1},
				policy.Input{Kind: policy.InputExited, Subject: "b", Instance: 1, Decision: 1, Reason: "signal=15"})
		case 20:
			in = append(in, policy.Input{Kind: policy.InputAuditAck, Seq: 3})
		}
	}
	return in
}

// record runs inputs through a core while recording, rotating like the daemon, and
// returns the events the live core emitted.
func record(t *testing.T, dir string, opts Options, inputs []policy.Input) []policy.Event {
	t.Helper()
	c, err := policy.New(policy.Config{Policy: testPolicy()})
	require.NoError(t, err)
	r, err := Open(dir, 1_800_000_000_000_000_000, opts)
	require.NoError(t, err)
	st, err := c.State()
	require.NoError(t, err)
	require.NoError(t, r.Start(st))
	var events []policy.Event
	for _, in := range inputs {
		require.NoError(t, r.Input(in))
		_ = c.Step(in)
		events = append(events, c.Ready().Events...)
		c.Advance()
		if r.Full() {
			st, err := c.State()
			require.NoError(t, err)
			require.NoError(t, r.Start(st))
		}
	}
	require.NoError(t, r.Close())
	return events
}

// TestReplayIsByteIdentical: a recorded run, rotated over several files, replays to the
// same events; with the oldest files pruned the rest still replays to the tail of them.
func TestReplayIsByteIdentical(t *testing.T) {
	dir := t.TempDir()
	live := record(t, dir, Options{MaxFileBytes: 1500, MaxFiles: 100}, scenario())
	names, err := List(dir)
	require.NoError(t, err)
	require.Greater(t, len(names), 3, "the run rotated")

	files, err := Chain(dir)
	require.NoError(t, err)
	got, err := Replay(files)
	require.NoError(t, err)
	assert.Equal(t, live, got)

	// Prune to the last 3 files: the replay starts at the oldest left and matches the
	// live run's tail.
	for _, n := range names[:len(names)-3] {
		require.NoError(t, os.Remove(filepath.Join(dir, n)))
	}
	files, err = Chain(dir)
	require.NoError(t, err)
	got, err = Replay(files)
	require.NoError(t, err)
	require.NotEmpty(t, got)
	assert.Equal(t, live[len(live)-len(got):], got)

	// A file missing in the middle breaks the chain, said so.
	require.NoError(t, os.Remove(filepath.Join(dir, names[len(names)-2])))
	files, err = Chain(dir)
	require.NoError(t, err)
	_, err = Replay(files)
	assert.ErrorContains(t, err, "does not continue")
}

// TestRotationKeepsMaxFiles: the recorder keeps at most MaxFiles files.
func TestRotationKeepsMaxFiles(t *testing.T) {
	dir := t.TempDir()
	record(t, dir, Options{MaxFileBytes: 1000, MaxFiles: 3}, scenario())
	names, err := List(dir)
	require.NoError(t, err)
	assert.Len(t, names, 3)
	files, err := Chain(dir)
	require.NoError(t, err)
	_, err = Replay(files)
	require.NoError(t, err)
}

// TestDamageCostsTheRestOfThatFile: a flipped byte in the last file stops its reading
// there, said in Damage; what came before still replays.
func TestDamageCostsTheRestOfThatFile(t *testing.T) {
	dir := t.TempDir()
	live := record(t, dir, Options{MaxFiles: 10}, scenario())
	names, err := List(dir)
	require.NoError(t, err)
	require.Len(t, names, 1)
	path := filepath.Join(dir, names[0])
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	clean, err := ReadFile(path)
	require.NoError(t, err)
	raw[clean.Offsets[len(clean.Offsets)/4]+12] ^= 0x40
	require.NoError(t, os.WriteFile(path, raw, 0o600))
	f, err := ReadFile(path)
	require.NoError(t, err)
	assert.NotEmpty(t, f.Damage)
	got, err := Replay([]*File{f})
	require.NoError(t, err)
	assert.Equal(t, live[:len(got)], got, "the inputs before the damage replay as they ran")
	assert.Less(t, len(got), len(live))

	_, err = Read(bytes.NewReader([]byte("not a trace")))
	assert.Error(t, err)
}

// TestWhatIfDiff: the same trace under a higher hard limit decides nothing; the diff
// names the real run's decisions as its own.
func TestWhatIfDiff(t *testing.T) {
	dir := t.TempDir()
	live := record(t, dir, Options{}, scenario())
	files, err := Chain(dir)
	require.NoError(t, err)
	lax := testPolicy()
	lax.HardBytes = 1 << 20
	other, err := WhatIf(files, lax)
	require.NoError(t, err)
	onlyActual, onlyOther := Diff(live, other)
	assert.Empty(t, onlyOther)
	require.NotEmpty(t, onlyActual)
	for _, d := range onlyActual {
		assert.Contains(t, []policy.EventKind{policy.EventKillDecided, policy.EventKillThrottled}, d.Kind)
	}
	// The same policy as the real run makes the same kill decisions (throttling may
	// differ: the model acknowledges audit at once, the real logd took its time).
	same, err := WhatIf(files, testPolicy())
	require.NoError(t, err)
	onlyActual, onlyOther = Diff(live, same)
	for _, d := range append(onlyActual, onlyOther...) {
		assert.NotEqual(t, policy.EventKillDecided, d.Kind, "%+v", d)
	}
}

// BenchmarkRecordSample is the live trace's cost per sample input (JSON, a frame and a
// buffered write), beside BenchmarkStepSample, the core's own cost for the same input:
// "append" is how Input writes it, "json" the json.Marshal path it replaced (and still
// takes for a policy or an escaped string).
func BenchmarkRecordSample(b *testing.B) {
	in := policy.Input{Kind: policy.InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 123 << 20, Count: 1, Slot: 1}
	for _, c := range []struct {
		name  string
		write func(r *Recorder) error
	}{
		{"append", func(r *Recorder) error { return r.Input(in) }},
		{"json", func(r *Recorder) error { return r.writeInput(in) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			r, err := Open(b.TempDir(), 1, Options{MaxFileBytes: 1 << 40})
			require.NoError(b, err)
			core, err := policy.New(policy.Config{Policy: testPolicy()})
			require.NoError(b, err)
			st, err := core.State()
			require.NoError(b, err)
			require.NoError(b, r.Start(st))
			start := r.size
			b.ReportAllocs()
			for b.Loop() {
				if err := c.write(r); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(r.size-start)/float64(b.N), "bytes/input")
		})
	}
}

func BenchmarkStepSample(b *testing.B) {
	c, err := policy.New(policy.Config{Policy: testPolicy()})
	require.NoError(b, err)
	require.NoError(b, c.Step(policy.Input{Kind: policy.InputRegister, Subject: "hog", Instance: 1}))
	in := policy.Input{Kind: policy.InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 123 << 20, Count: 1}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Step(in)
	}
}

// TestWhatIfPutsBackTheReadingsTheDaemonSkipped: the daemon steps (and records) a kernel
// reading only when its core would not ignore it. Here the kernel stays 32 MiB above the
// published value, under the real margin of 64 MiB: after the first, every reading is
// skipped. With a 16 MiB margin the gap counts on every tick's reading, so the what-if
// must put them back: it reports the under-report, exactly as over the whole stream.
func TestWhatIfPutsBackTheReadingsTheDaemonSkipped(t *testing.T) {
	const mib = 1 << 20
	real := testPolicy()
	real.SoftBytes, real.HardBytes = 1<<30, 2<<30
	real.UnderReport = policy.UnderReport{MarginBytes: 64 * mib, Ticks: 3}
	tight := real
	tight.UnderReport.MarginBytes = 16 * mib

	c, err := policy.New(policy.Config{Policy: real})
	require.NoError(t, err)
	st, err := c.State()
	require.NoError(t, err)
	var all, stepped []policy.Input
	step := func(in policy.Input, shellSkips bool) {
		all = append(all, in)
		if shellSkips && c.KernelUnchanged(&in) {
			return
		}
		stepped = append(stepped, in)
		require.NoError(t, c.Step(in))
		if c.HasReady() {
			c.Ready()
			c.Advance()
		}
	}
	step(policy.Input{Kind: policy.InputRegister, Subject: "hog", Instance: 1}, false)
	step(policy.Input{Kind: policy.InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 100 * mib, Count: 1}, false)
	for range 8 {
		step(policy.Input{Kind: policy.InputKernel, Subject: "hog", Instance: 1, Bytes: 132 * mib}, true)
		step(policy.Input{Kind: policy.InputTick}, false)
	}
	require.Less(t, len(stepped), len(all), "the shell skipped nothing: the test proves nothing")

	underReported := func(evs []policy.Event) int {
		n := 0
		for _, e := range evs {
			if e.Kind == policy.EventMemstatUnderReported {
				n++
			}
		}
		return n
	}
	whole, err := WhatIf([]*File{{State: st, Inputs: all}}, tight)
	require.NoError(t, err)
	require.Equal(t, 1, underReported(whole), "over the whole stream the tight margin reports")
	got, err := WhatIf([]*File{{State: st, Inputs: stepped}}, tight)
	require.NoError(t, err)
	assert.Equal(t, whole, got, "the trace as recorded, with the skipped readings put back")
	same, err := WhatIf([]*File{{State: st, Inputs: stepped}}, real)
	require.NoError(t, err)
	assert.Zero(t, underReported(same), "under the real margin, nothing")
}
