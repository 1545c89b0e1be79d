package daemon

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/services/oomd/policy"
)

// fakeAuditor holds records until the test acknowledges them.
type fakeAuditor struct {
	mu   sync.Mutex
	recs []policy.AuditRecord
	ack  func(uint64)
}

func (a *fakeAuditor) Submit(r []policy.AuditRecord) {
	a.mu.Lock()
	a.recs = append(a.recs, r...)
	a.mu.Unlock()
}
func (a *fakeAuditor) Start(_ context.Context, ack func(uint64)) error { a.ack = ack; return nil }

// fakeTerminator records requests and acknowledges each once the test releases it, so
// a test decides whether execd's ack or the exit reaches oomd first.
type fakeTerminator struct {
	calls   chan policy.TerminateRequest
	release chan struct{}
}

func (f fakeTerminator) Terminate(_ context.Context, r policy.TerminateRequest) (string, error) {
	f.calls <- r
	if f.release != nil { // nil: acknowledge at once
		<-f.release
	}
	return "", nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newTestDaemon(t *testing.T) (*Daemon, *fakeAuditor, fakeTerminator, *syncBuffer) {
	term := fakeTerminator{calls: make(chan policy.TerminateRequest, 8), release: make(chan struct{})}
	d, aud, markers, _ := newTestDaemonWith(t, term)
	return d, aud, term, markers
}

// newTestDaemonWith is newTestDaemon with the test's terminator; stop ends the loop.
func newTestDaemonWith(t *testing.T, term Terminator) (d *Daemon, aud *fakeAuditor, markers *syncBuffer, stop func()) {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes = 50, 100
	aud = &fakeAuditor{}
	markers = &syncBuffer{}
	d, err := New(Config{Policy: p, Markers: markers, Log: zaptest.NewLogger(t)}, aud, term)
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	return d, aud, markers, runLoop(t, d)
}

// handOver hands subject to d the way execd does (a SubjectHandoff with a fresh
// socketpair, taken by acceptHandoff) and returns the subject's end as a publisher, so a
// test's samples reach oomd's real sinkServer over a real go-capnp connection.
func handOver(t *testing.T, d *Daemon, subject string) *publisher {
	t.Helper()
	p := newPublisher(context.Background(), handoff(t, d, subject), subject, false)
	sl, ok := d.slot(subject)
	require.True(t, ok)
	srv := sl.conn
	// oomd's end logs to the test's logger: it is closed, and Close waits for its
	// goroutines, before the test ends.
	t.Cleanup(func() {
		srv.Close()
		p.sink.Release()
		p.conn.Close()
	})
	return p
}

// report streams n samples of size bytes claiming claimed and returns once oomd's sink has
// returned from every one, so the next tick sees them.
func (p *publisher) report(t *testing.T, claimed string, size uint64, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		err := p.sink.Report(ctx, func(a oomdpb_report) error { return fill(a, size, uint64(i), claimed) })
		require.NoError(t, err, "report %d of %d from %s", i+1, n, p.subject)
	}
	require.NoError(t, p.sink.WaitStreaming(), "reports from %s", p.subject)
}

func TestTerminateWaitsForDurableAudit(t *testing.T) {
	d, aud, term, markers := newTestDaemon(t)
	handOver(t, d, "hog").report(t, "hog", 500, 1)
	for range 10 {
		d.tickNow()
	}
	aud.mu.Lock()
	require.Len(t, aud.recs, 1, "one kill decision, one audit record")
	rec := aud.recs[0]
	aud.mu.Unlock()
	assert.Equal(t, policy.EventKillDecided, rec.Kind)
	select {
	case r := <-term.calls:
		t.Fatalf("terminate %+v sent before its audit record was durable", r)
	default:
	}

	aud.ack(rec.WriterSeq)
	var req policy.TerminateRequest
	select {
	case req = <-term.calls:
	case <-time.After(10 * time.Second):
		t.Fatal("no terminate after the audit ack")
	}
	assert.Equal(t, "hog", req.Subject)
	assert.Equal(t, rec.Decision, req.Decision)

	// The exit alone is not a kill: execd's acknowledgement must arrive too.
	d.Exited("hog", 1, 0, "signal=15")
	assert.NotContains(t, markers.String(), "oomd: kill", "killed reported before execd acknowledged")
	close(term.release)
	require.Eventually(t, func() bool { return markers.String() != "" }, 10*time.Second, time.Millisecond)
	assert.Equal(t, "oomd: kill app=hog bytes=500\n", markers.String())
}

// TestDryRunSendsNoTerminate: under a dry run the hog's crossing is audited as wouldKill
// and nothing is decided or sent; "ctl", whose override takes it out of the dry run,
// crossing at the same tick is decided and terminated as usual, so the absence of the
// hog's request is not just a slow terminator.
func TestDryRunSendsNoTerminate(t *testing.T) {
	d, aud, term, markers := newTestDaemon(t)
	var p policy.Policy
	d.withCore(func(c *policy.Core) { p = c.Policy() })
	off := false
	p.DryRun = true
	p.Overrides = []policy.SubjectLimit{{Subject: "ctl", SoftBytes: 50, HardBytes: 100, DryRun: &off}}
	_, err := d.SetPolicy(p, 0)
	require.NoError(t, err)
	handOver(t, d, "hog").report(t, "hog", 500, 1)
	handOver(t, d, "ctl").report(t, "ctl", 500, 1)
	for range 10 {
		d.tickNow()
	}
	aud.mu.Lock()
	recs := slices.Clone(aud.recs)
	aud.mu.Unlock()
	kinds := map[string]policy.EventKind{}
	for _, r := range recs {
		kinds[r.Subject] = r.Kind
	}
	assert.Equal(t, map[string]policy.EventKind{"hog": policy.EventWouldKill, "ctl": policy.EventKillDecided}, kinds)
	aud.ack(recs[len(recs)-1].WriterSeq)
	select {
	case req := <-term.calls:
		assert.Equal(t, "ctl", req.Subject)
	case <-time.After(10 * time.Second):
		t.Fatal("no terminate for the enforced subject")
	}
	close(term.release)
	d.Exited("ctl", 1, 0, "signal=15")
	require.Eventually(t, func() bool { return markers.String() != "" }, 10*time.Second, time.Millisecond)
	for range 5 {
		d.tickNow()
	}
	select {
	case req := <-term.calls:
		t.Fatalf("terminate %+v under a dry run", req)
	default:
	}
	assert.Equal(t, "oomd: kill app=ctl bytes=500\n", markers.String())
}

func TestSpoofFloodIsCoalescedPerTick(t *testing.T) {
	d, _, _, _ := newTestDaemon(t)
	handOver(t, d, "hog")
	handOver(t, d, "evil").report(t, "hog", 1<<40, 10_000)
	d.dirty.mu.Lock()
	assert.Len(t, d.dirty.slots, 1, "a flood occupies one dirty entry")
	d.dirty.mu.Unlock()
	d.tickNow()
	var hs, es policy.SubjectStatus
	var rejectedEvents int
	d.withCore(func(c *policy.Core) {
		hs, _ = c.Subject("hog")
		es, _ = c.Subject("evil")
		evs, _, _ := c.Events(0, 1024)
		for _, e := range evs {
			if e.Kind == policy.EventMemstatRejected {
				rejectedEvents++
				assert.Equal(t, "evil", e.Subject)
				assert.True(t, strings.HasPrefix(e.Reason, "claimed=hog"))
			}
		}
	})
	assert.Equal(t, uint64(0), hs.Bytes)
	assert.Equal(t, uint64(10_000), es.Rejected)
	assert.Equal(t, 1, rejectedEvents)
}

// Alive is called from the tick loop once per completed tick, so a loop that stops
// ticking (a deadlock, a wedged core) stops feeding systemd's watchdog.
func TestAliveFollowsEveryCompletedTick(t *testing.T) {
	p := policy.DefaultPolicy()
	p.SampleMs = policy.MinSampleMs
	alive := make(chan uint64, 16)
	var d *Daemon
	d, err := New(Config{Policy: p, Log: zaptest.NewLogger(t), Alive: func() {
		tick := d.core.TickCount() // called on the loop, right after the tick
		select {
		case alive <- tick:
		default: // the test has read enough
		}
	}}, &fakeAuditor{}, fakeTerminator{calls: make(chan policy.TerminateRequest, 1)})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var prev uint64
	for i := range 3 {
		select {
		case tick := <-alive:
			assert.Greater(t, tick, prev, "call %d follows a tick the core completed", i+1)
			prev = tick
		case <-time.After(10 * time.Second):
			t.Fatal("Alive not called from the tick loop")
		}
	}
	cancel()
	require.NoError(t, <-done)
}
