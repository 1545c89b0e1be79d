package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/sysoom"
)

// fakeSystem is execd's SystemControl: each teardown waits for the test to answer it.
type fakeSystem struct {
	calls   chan string
	answers chan fakeAnswer
}

type fakeAnswer struct {
	rep TeardownReport
	err error
}

func (f *fakeSystem) Teardown(ctx context.Context, reason string) (TeardownReport, error) {
	f.calls <- reason
	select {
	case a := <-f.answers:
		return a.rep, a.err
	case <-ctx.Done():
		return TeardownReport{}, ctx.Err()
	}
}

type sysHarness struct {
	t        *testing.T
	d        *Daemon
	aud      *fakeAuditor
	sys      *fakeSystem
	markers  *syncBuffer
	rebooted chan struct{}
	path     string
}

// newSysHarness: levels warning 1000 / imminentOom 600 / oom 300, hysteresis 100, and a
// bound of 60 s at 6 s ticks = 10 ticks, driven by the test's own d.tickNow() calls (the
// injected clock); the same bound on the wall clock is a minute away, so it decides
// nothing here unless a test asks for it.
func newSysHarness(t *testing.T, opts ...func(*policy.Policy)) *sysHarness {
	p := policy.DefaultPolicy()
	p.Levels = policy.LevelThresholds{WarningBytes: 1000, ImminentOOMBytes: 600, OOMBytes: 300, HysteresisBytes: 100}
	p.SampleMs, p.OOMTimeoutMs = 6000, 60000
	for _, o := range opts {
		o(&p)
	}
	h := &sysHarness{t: t, aud: &fakeAuditor{}, sys: &fakeSystem{calls: make(chan string, 4), answers: make(chan fakeAnswer, 4)},
		markers: &syncBuffer{}, rebooted: make(chan struct{}, 4), path: filepath.Join(t.TempDir(), "reboot.rec")}
	store, err := sysoom.OpenStore(h.path)
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	boot, err := sysoom.StartBoot(store)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h.d, err = New(Config{Policy: p, Markers: h.markers, Log: zaptest.NewLogger(t), System: SystemConfig{
		Control: h.sys, Boot: boot, Reboot: func() { h.rebooted <- struct{}{} }, AuditGrace: 10 * time.Second,
	}}, h.aud, fakeTerminator{calls: make(chan policy.TerminateRequest, 8)})
	require.NoError(t, err)
	require.NoError(t, h.d.Start(ctx))
	runLoop(t, h.d)
	return h
}

// ackAudit makes every submitted audit record durable.
func (h *sysHarness) ackAudit() {
	h.aud.mu.Lock()
	n := len(h.aud.recs)
	var last uint64
	if n > 0 {
		last = h.aud.recs[n-1].WriterSeq
	}
	h.aud.mu.Unlock()
	if last > 0 {
		h.aud.ack(last)
	}
}

func (h *sysHarness) events() []policy.Event {
	var evs []policy.Event
	h.d.withCore(func(c *policy.Core) { evs, _, _ = c.Events(0, 1000) })
	return evs
}

func (h *sysHarness) kinds() []string {
	var out []string
	for _, e := range h.events() {
		out = append(out, e.Kind.String()+" "+e.Reason)
	}
	return out
}

func (h *sysHarness) waitCall() string {
	h.t.Helper()
	select {
	case r := <-h.sys.calls:
		return r
	case <-time.After(10 * time.Second):
		h.t.Fatal("no teardown call")
	}
	return ""
}

func (h *sysHarness) waitReboot() {
	h.t.Helper()
	select {
	case <-h.rebooted:
	case <-time.After(10 * time.Second):
		h.t.Fatalf("no reboot; events %v", h.kinds())
	}
}

func (h *sysHarness) record() sysoom.Record {
	h.t.Helper()
	s, err := sysoom.OpenStore(h.path)
	require.NoError(h.t, err)
	defer s.Close()
	r, err := s.Read()
	require.NoError(h.t, err)
	return r
}

// TestOOMAckBeforeBound: the teardown starts only after the haltClaimed record is
// durable, the store says in progress while it runs, and execd's ack ends the sequence
// at once (no tick passes), with a graceful record and the reboot action.
func TestOOMAckBeforeBound(t *testing.T) {
	h := newSysHarness(t)
	h.d.Register(&slot{subject: "web", instance: 1})
	h.d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: 250})
	select {
	case <-h.sys.calls:
		t.Fatal("teardown before the haltClaimed record was durable")
	default:
	}
	h.ackAudit()
	assert.Equal(t, policy.RebootOOM, h.waitCall())
	require.Eventually(t, func() bool { return h.record().State == sysoom.StateInProgress }, 10*time.Second, time.Millisecond)

	h.d.tickNow()
	h.sys.answers <- fakeAnswer{rep: TeardownReport{Graceful: true}}
	require.Eventually(t, func() bool {
		var done bool
		h.d.withCore(func(c *policy.Core) { done = c.Halt().Done })
		return done
	}, 10*time.Second, time.Millisecond)
	select {
	case <-h.rebooted:
		t.Fatal("rebooted before the outcome's audit record was durable")
	default:
	}
	h.ackAudit()
	h.waitReboot()

	rec := h.record()
	assert.Equal(t, sysoom.StateComplete, rec.State)
	assert.Equal(t, sysoom.ReasonOOM, rec.Reason)
	assert.True(t, rec.Graceful)
	assert.Empty(t, rec.NotStopped)
	var tick uint64
	h.d.withCore(func(c *policy.Core) { tick = c.TickCount() })
	assert.Equal(t, uint64(1), tick, "the ack ended the sequence without waiting for the bound")
	assert.Contains(t, h.markers.String(), "oomd: rebooting reason=oom graceful=true timedOut=false")
	assert.Equal(t, []string{"subjectRegistered ", "levelChanged normal->oom", "haltClaimed oom", "rebootAcked graceful"}, h.kinds())
}

// TestOOMBoundFirst: execd never answers in time; at the tenth tick the bound ends the
// sequence, the record names the subject never reported stopped, and the late ack is
// recorded and ignored.
func TestOOMBoundFirst(t *testing.T) {
	h := newSysHarness(t)
	h.d.Register(&slot{subject: "stuck", instance: 1})
	h.d.Register(&slot{subject: "web", instance: 1})
	h.d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: 250})
	h.ackAudit()
	h.waitCall()
	h.d.Exited("web", 1, 0, "signal=15")
	for range 9 {
		h.d.tickNow()
	}
	var halt policy.HaltStatus
	h.d.withCore(func(c *policy.Core) { halt = c.Halt() })
	require.False(t, halt.Done, "the bound is 10 ticks")
	h.d.tickNow()
	h.ackAudit()
	h.waitReboot()
	rec := h.record()
	assert.False(t, rec.Graceful)
	assert.Equal(t, []string{"stuck"}, rec.NotStopped)
	assert.Contains(t, h.markers.String(), "oomd: rebooting reason=oom graceful=false timedOut=true")

	h.sys.answers <- fakeAnswer{rep: TeardownReport{Graceful: true}}
	require.Eventually(t, func() bool {
		k := h.kinds()
		return k[len(k)-1] == "rebootAcked ignored: after the timeout; graceful"
	}, 10*time.Second, time.Millisecond)
	select {
	case <-h.rebooted:
		t.Fatal("a second reboot")
	default:
	}
}

// TestOOMBoundOnWallClock: ticks that never come (a starved tick loop) cannot stretch
// the bound: the wall-clock timer started at the claim ends the sequence.
func TestOOMBoundOnWallClock(t *testing.T) {
	h := newSysHarness(t, func(p *policy.Policy) { p.SampleMs, p.OOMTimeoutMs = 60000, 1000 })
	h.d.Register(&slot{subject: "stuck", instance: 1})
	start := time.Now()
	h.d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: 10})
	h.ackAudit()
	h.waitCall()
	require.Eventually(t, func() bool {
		var d bool
		h.d.withCore(func(c *policy.Core) { d = c.Halt().Done })
		return d
	}, 10*time.Second, time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), time.Second, "not before the bound")
	h.ackAudit()
	h.waitReboot()
	k := h.kinds()
	assert.Equal(t, "rebootTimedOut notStopped=stuck by=clock", k[len(k)-1])
	assert.Equal(t, []string{"stuck"}, h.record().NotStopped)
}

// TestTeardownUnimplemented: an execd without teardown (or one that fails) is the same
// as no ack: the bound ends the sequence.
func TestTeardownUnimplemented(t *testing.T) {
	h := newSysHarness(t)
	h.d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: 10})
	h.ackAudit()
	h.waitCall()
	h.sys.answers <- fakeAnswer{err: capnp.Unimplemented("teardown: not implemented yet in execd")}
	for range 10 {
		h.d.tickNow()
	}
	h.ackAudit()
	h.waitReboot()
	assert.False(t, h.record().Graceful)
}

// TestRequestRebootRaces: a requested reboot claims the token; an OOM and a second
// request are refused, recorded, and start nothing.
func TestRequestRebootRaces(t *testing.T) {
	h := newSysHarness(t)
	require.NoError(t, h.d.RequestReboot(policy.RebootUserRequest))
	h.d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: 10})
	err := h.d.RequestReboot(policy.RebootUserRequest)
	require.ErrorIs(t, err, ErrHaltClaimed)
	assert.Contains(t, err.Error(), "halt token already claimed by userRequest at tick 0")
	h.ackAudit()
	assert.Equal(t, policy.RebootUserRequest, h.waitCall())
	h.sys.answers <- fakeAnswer{rep: TeardownReport{Graceful: true}}
	require.Eventually(t, func() bool { var d bool; h.d.withCore(func(c *policy.Core) { d = c.Halt().Done }); return d }, 10*time.Second, time.Millisecond)
	h.ackAudit()
	h.waitReboot()
	assert.Equal(t, sysoom.ReasonUserRequest, h.record().Reason)
	var refused int
	for _, e := range h.events() {
		if e.Kind == policy.EventHaltRefused {
			refused++
		}
	}
	assert.Equal(t, 2, refused)
	h.aud.mu.Lock()
	defer h.aud.mu.Unlock()
	var audited int
	for _, r := range h.aud.recs {
		if r.Kind == policy.EventHaltRefused {
			audited++
		}
	}
	assert.Equal(t, 2, audited, "refusals reach the audit journal")
	select {
	case <-h.sys.calls:
		t.Fatal("a second teardown")
	default:
	}
}

// blockingWatcher answers changed() only when the test lets it.
type blockingWatcher struct {
	mu    sync.Mutex
	got   []oomdpb.PressureLevel
	enter chan struct{}
	leave chan struct{}
}

func (w *blockingWatcher) Changed(ctx context.Context, call oomdpb.LevelWatcher_changed) error {
	w.mu.Lock()
	w.got = append(w.got, call.Args().Level())
	w.mu.Unlock()
	w.enter <- struct{}{}
	select {
	case <-w.leave:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *blockingWatcher) levels() []oomdpb.PressureLevel {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]oomdpb.PressureLevel(nil), w.got...)
}

// TestLevelWatcherCoalesces: while a change is unacknowledged, later ones overwrite a
// single slot; the watcher then gets the latest level only, and nothing when the level
// came back to what it was last told.
func TestLevelWatcherCoalesces(t *testing.T) {
	h := newSysHarness(t)
	w := &blockingWatcher{enter: make(chan struct{}, 8), leave: make(chan struct{}, 8)}
	client := oomdpb.LevelWatcher_ServerToClient(w)
	defer client.Release()
	level, cancel, err := h.d.watchLevels(client.AddRef())
	require.NoError(t, err)
	defer cancel()
	assert.Equal(t, policy.LevelNormal, level)

	wait := func() {
		t.Helper()
		select {
		case <-w.enter:
		case <-time.After(10 * time.Second):
			t.Fatalf("no changed() call; got %v", w.levels())
		}
	}
	mem := func(n uint64) { h.d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: n}) }
	mem(900) // warning: delivered, unanswered
	wait()
	mem(500)  // imminentOom
	mem(800)  // warning
	mem(5000) // normal
	mem(550)  // imminentOom: the latest
	w.leave <- struct{}{}
	wait()
	assert.Equal(t, []oomdpb.PressureLevel{oomdpb.PressureLevel_warning, oomdpb.PressureLevel_imminentOom}, w.levels())

	// Down and back up again while unanswered: nothing new to tell.
	mem(5000)
	mem(550)
	w.leave <- struct{}{}
	mem(540) // same level: no change at all
	select {
	case <-w.enter:
		t.Fatalf("told again although the level is what it was last told: %v", w.levels())
	case <-time.After(50 * time.Millisecond): // a negative check: nothing may arrive
	}

	// Releasing the subscription ends the watcher's goroutine.
	cancel()
	require.Eventually(t, func() bool {
		h.d.sys.watchers.mu.Lock()
		defer h.d.sys.watchers.mu.Unlock()
		return len(h.d.sys.watchers.list) == 0
	}, 10*time.Second, time.Millisecond)
}

func TestLevelWatchersBounded(t *testing.T) {
	h := newSysHarness(t)
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for i := 0; ; i++ {
		c := oomdpb.LevelWatcher_ServerToClient(&blockingWatcher{enter: make(chan struct{}, 1), leave: make(chan struct{})})
		_, cancel, err := h.d.watchLevels(c)
		if err != nil {
			assert.True(t, errors.Is(err, errTooManyLevelWatchers))
			assert.Equal(t, maxLevelWatchers, i)
			return
		}
		cancels = append(cancels, cancel)
	}
}
