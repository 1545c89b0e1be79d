package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/internal/loopwait"
	"oomd.dev/oomd/internal/testutil"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/tracelog"
)

// TestClocksConfigure: the level readings share the tick when their interval is the
// tick's (or unset), get a clock of their own when it differs, and follow a policy
// change either way.
func TestClocksConfigure(t *testing.T) {
	levels := policy.LevelThresholds{WarningBytes: 1000, ImminentOOMBytes: 600, OOMBytes: 300}
	pol := func(sampleMs, intervalMs uint32, lv bool) policy.Policy {
		p := policy.DefaultPolicy()
		p.SampleMs = sampleMs
		if lv {
			p.Levels = levels
			p.Levels.IntervalMs = intervalMs
		}
		return p
	}
	newClocks := func() *clocks {
		w, err := loopwait.New()
		require.NoError(t, err)
		t.Cleanup(func() { w.Close() })
		var c clocks
		require.NoError(t, c.init(w))
		return &c
	}
	// What the kernel has armed: whether the clock runs, and its period.
	kernel := func(c *clocks, tm loopwait.Timer) time.Duration {
		armed, every, err := c.w.Armed(tm)
		require.NoError(t, err)
		if !armed {
			return 0
		}
		return every
	}
	steps := []struct {
		name        string
		p           policy.Policy
		onTick, own bool
	}{
		{"levels off", pol(100, 0, false), false, false},
		{"unset interval: on the tick", pol(100, 0, true), true, false},
		{"same interval: on the tick", pol(100, 100, true), true, false},
		{"other interval: own clock", pol(100, 500, true), false, true},
		{"the tick moves to it: on the tick", pol(500, 500, true), true, false},
		{"the tick moves away: own clock", pol(200, 500, true), false, true},
		{"the level clock moves", pol(200, 700, true), false, true},
		{"levels off again", pol(200, 0, false), false, false},
	}
	c := newClocks()
	for _, s := range steps {
		require.NoError(t, c.configure(s.p, false))
		assert.Equal(t, s.onTick, c.levelsOnTick, s.name)
		tick := time.Duration(s.p.SampleMs) * time.Millisecond
		assert.Equal(t, tick, kernel(c, c.tickT), s.name)
		want := time.Duration(0)
		if s.own {
			want = time.Duration(s.p.Levels.IntervalMs) * time.Millisecond
		}
		assert.Equal(t, want, kernel(c, c.levelT), s.name)
		assert.Equal(t, tick, c.period, s.name)
	}
	m := newClocks()
	require.NoError(t, m.configure(pol(100, 500, true), true))
	assert.Zero(t, kernel(m, m.tickT), "manual: no tick clock")
	assert.Zero(t, kernel(m, m.levelT), "manual: no level clock")
	assert.False(t, m.levelsOnTick, "manual: the test steps the levels")
}

// TestLevelsShareTheTick runs the real loop with levels at the tick's interval and reads
// its live trace: every MemAvailable reading is stepped right before a tick, one per
// tick, so the loop wakes once per tick, not twice.
func TestLevelsShareTheTick(t *testing.T) {
	dir := t.TempDir()
	meminfo := filepath.Join(dir, "meminfo")
	require.NoError(t, os.WriteFile(meminfo, []byte("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n"), 0o600))
	rec, err := tracelog.Open(filepath.Join(dir, "trace"), 1, tracelog.Options{})
	require.NoError(t, err)
	p := policy.DefaultPolicy()
	p.SampleMs = policy.MinSampleMs
	p.Levels = policy.LevelThresholds{WarningBytes: 1 << 20, ImminentOOMBytes: 1 << 19, OOMBytes: 1 << 18}
	ticks := make(chan struct{}, 64)
	d, err := New(Config{Policy: p, Log: zaptest.NewLogger(t), Trace: rec, System: SystemConfig{Meminfo: meminfo},
		Alive: func() {
			select {
			case ticks <- struct{}{}:
			default:
			}
		}}, &fakeAuditor{}, fakeTerminator{calls: make(chan policy.TerminateRequest, 1)})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	for i := range 10 {
		select {
		case <-ticks:
		case <-time.After(10 * time.Second):
			t.Fatalf("tick %d never came", i+1)
		}
	}
	cancel()
	require.NoError(t, <-done) // the loop closed (flushed) the trace

	names, err := tracelog.List(filepath.Join(dir, "trace"))
	require.NoError(t, err)
	require.Len(t, names, 1)
	f, err := tracelog.ReadFile(filepath.Join(dir, "trace", names[0]))
	require.NoError(t, err)
	require.Empty(t, f.Damage)
	var kinds []policy.InputKind
	for _, in := range f.Inputs {
		kinds = append(kinds, in.Kind)
	}
	require.GreaterOrEqual(t, len(kinds), 20)
	for i := 0; i+1 < len(kinds); i += 2 {
		require.Equal(t, []policy.InputKind{policy.InputMemAvailable, policy.InputTick}, kinds[i:i+2], "inputs %d..%d of %v", i, i+1, kinds)
	}
}

// TestNoLockAroundTheCore: the owner loop is the core's only guard. A mutex on Daemon
// other than polMu (which serialises SetPolicy's check-persist-apply, never the core)
// means something touches the loop's state from another goroutine.
func TestNoLockAroundTheCore(t *testing.T) {
	typ := reflect.TypeFor[Daemon]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		switch f.Type {
		case reflect.TypeFor[sync.Mutex](), reflect.TypeFor[sync.RWMutex]():
			assert.Equal(t, "polMu", f.Name, "Daemon.%s: a lock beside the owner loop", f.Name)
		}
	}
}

// TestTraceFlushedOnNewsOrEveryTenSeconds: an idle loop writes its live trace every ten
// seconds of ticks, and at the first tick after anything produced output.
func TestTraceFlushedOnNewsOrEveryTenSeconds(t *testing.T) {
	dir := t.TempDir()
	rec, err := tracelog.Open(dir, 1, tracelog.Options{})
	require.NoError(t, err)
	p := policy.DefaultPolicy()
	p.SampleMs = 1000 // a flush every 10 idle ticks
	d, err := New(Config{Policy: p, Log: zaptest.NewLogger(t), Trace: rec}, &fakeAuditor{}, fakeTerminator{calls: make(chan policy.TerminateRequest, 1)})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	runLoop(t, d)
	onDisk := func() int64 {
		names, err := tracelog.List(dir)
		require.NoError(t, err)
		require.Len(t, names, 1)
		fi, err := os.Stat(filepath.Join(dir, names[0]))
		require.NoError(t, err)
		return fi.Size()
	}
	start := onDisk()
	for range 9 {
		d.tickNow()
	}
	assert.Equal(t, start, onDisk(), "nine idle ticks stay buffered")
	d.tickNow()
	second := onDisk()
	assert.Greater(t, second, start, "the tenth idle tick (ten seconds) flushes")
	require.NoError(t, d.Register(&slot{subject: "app", instance: 1})) // an event: subjectRegistered
	assert.Equal(t, second, onDisk(), "the registration is buffered until the tick")
	d.tickNow()
	assert.Greater(t, onDisk(), second, "the tick after an event flushes")
}

// TestPanicOnTheLoopFlushesTheTrace: a panic on the loop ends oomd, and the inputs
// buffered before it are on disk. The loop panics in a child process (this test binary,
// run again); the parent reads the child's trace.
func TestPanicOnTheLoopFlushesTheTrace(t *testing.T) {
	if dir := os.Getenv("OOMD_PANIC_TRACE_DIR"); dir != "" {
		rec, err := tracelog.Open(dir, 1, tracelog.Options{})
		require.NoError(t, err)
		d, err := New(Config{Policy: policy.DefaultPolicy(), Trace: rec}, &fakeAuditor{}, fakeTerminator{calls: make(chan policy.TerminateRequest, 1)})
		require.NoError(t, err)
		require.NoError(t, d.Start(context.Background()))
		d.manualTicks = true
		go func() { _ = d.Run(context.Background()) }()
		for range 3 {
			d.tickNow() // idle ticks: buffered, not yet written
		}
		_ = d.do(func() { panic("a core bug") })
		select {} // the panic ends the process; nothing else may
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPanicOnTheLoopFlushesTheTrace$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OOMD_PANIC_TRACE_DIR="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the child should have died of its panic:\n%s", out)
	require.Equal(t, 2, exit.ExitCode(), "a panic's exit status:\n%s", out)
	require.Contains(t, string(out), "panic: a core bug")
	names, err := tracelog.List(dir)
	require.NoError(t, err)
	require.Len(t, names, 1)
	f, err := tracelog.ReadFile(filepath.Join(dir, names[0]))
	require.NoError(t, err)
	ticks := 0
	for _, in := range f.Inputs {
		if in.Kind == policy.InputTick {
			ticks++
		}
	}
	assert.Equal(t, 3, ticks, "the ticks before the panic are on disk")
}

// TestCallsRunOnceOrReportStopped: a call made before Run waits for it and runs; a call
// made after Run ended is refused with errStopped and never runs.
func TestCallsRunOnceOrReportStopped(t *testing.T) {
	d, err := New(Config{Policy: policy.DefaultPolicy()}, &fakeAuditor{}, fakeTerminator{calls: make(chan policy.TerminateRequest, 1)})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	d.manualTicks = true
	early := make(chan error, 1)
	ran := 0
	go func() { early <- d.do(func() { ran++ }) }()
	testutil.Eventually(t, 10*time.Second, func() (int, bool) { return len(d.calls), len(d.calls) == 1 }, "the early call is queued")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case err := <-early:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("a call made before Run never ran")
	}
	cancel()
	require.NoError(t, <-done)
	assert.ErrorIs(t, d.do(func() { ran++ }), errStopped)
	assert.Equal(t, 1, ran, "the call before Run ran once; the one after it did not")
}
