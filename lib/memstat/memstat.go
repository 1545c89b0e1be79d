// Package memstat publishes a process's cooperative memory signal to oomd.
//
// A process started by execd inherits a direct connection to oomd (OOMD_MEMSTAT_FD).
// oomd bound that connection to the subject execd named, so nothing the process sends
// can change who it is. The Publisher keeps only the latest value: Set never blocks and
// never allocates, and at most one sample per period leaves the process (coalescing), so
// a busy caller costs oomd one sample per period whatever it does.
//
//	pub, err := memstat.Connect(ctx, memstat.Options{Period: 100 * time.Millisecond}, log)
//	if err != nil { ... }      // not started by execd: run without publishing
//	defer pub.Close()
//	go pub.Run(ctx)
//	pub.Set(memstat.RuntimeBytes()) // or any explicit value, as often as you like
//
// The value is what the process says it holds. It is not kernel RSS: a process can
// under-report or not report at all (docs/reliability/oom-policy.md).
package memstat

import (
	"context"
	"errors"
	"fmt"
	"runtime/metrics"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// Options configure a Publisher.
type Options struct {
	// Period is the minimum interval between two samples (default 100 ms).
	Period time.Duration
	// Claim is the subject id put in the payload. oomd ignores it for attribution and
	// rejects a sample whose claim differs from the connection's identity; honest
	// publishers leave it empty to claim their own id (OOMD_SUBJECT).
	Claim string
	// Bootstrap is offered to oomd on the same connection (e.g. a TestHook); optional.
	Bootstrap capnp.Client
}

// flowWindow bounds the bytes of samples in flight to oomd; one sample is ~100 bytes,
// so the window is far above a single message (a FixedLimiter panics otherwise).
const flowWindow = 16 << 10

// Publisher sends the latest value to oomd at most once per period.
type Publisher struct {
	log    *zap.Logger
	period time.Duration
	claim  string
	conn   *rpc.Conn // nil when built with New around an existing sink
	sink   oomdpb.MemstatSink

	latest  atomic.Uint64
	changed chan struct{} // capacity 1: a pending "value changed" wake-up
	sent    atomic.Uint64 // samples sent, for tests and status
}

// Connect opens the inherited connection to oomd and returns a Publisher on it.
func Connect(ctx context.Context, opts Options, log *zap.Logger) (*Publisher, error) {
	c, err := rpcx.InheritedConn(rpcx.EnvMemstatFD)
	if err != nil {
		return nil, err
	}
	conn := rpcx.NewConn(c, opts.Bootstrap, log)
	sink := oomdpb.MemstatSink(conn.Bootstrap(ctx))
	p := New(sink, opts, log)
	p.conn = conn
	return p, nil
}

// New wraps an existing sink (it takes over the reference).
func New(sink oomdpb.MemstatSink, opts Options, log *zap.Logger) *Publisher {
	if opts.Period <= 0 {
		opts.Period = 100 * time.Millisecond
	}
	if opts.Claim == "" {
		opts.Claim = subjectFromEnv()
	}
	// The limiter must sit on the exact reference we call through (CAPNP-NOTES trap 4).
	sink.SetFlowLimiter(flowcontrol.NewFixedLimiter(flowWindow))
	return &Publisher{
		log:     log.Named("memstat"),
		period:  opts.Period,
		claim:   opts.Claim,
		sink:    sink,
		changed: make(chan struct{}, 1),
	}
}

// Set records the latest value. It never blocks.
func (p *Publisher) Set(bytes uint64) {
	p.latest.Store(bytes)
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Sent is the number of samples sent so far.
func (p *Publisher) Sent() uint64 { return p.sent.Load() }

// Done is closed when the connection to oomd ends (nil channel without a connection).
func (p *Publisher) Done() <-chan struct{} {
	if p.conn == nil {
		return nil
	}
	return p.conn.Done()
}

// Run sends samples until ctx ends or oomd goes away. A value that changes many times
// within a period is sent once, at most one period after the previous sample.
func (p *Publisher) Run(ctx context.Context) error {
	var last time.Time
	lastVal, haveLast := uint64(0), false
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.Done():
			return errors.New("memstat: connection to oomd closed")
		case <-p.changed:
		case <-timer.C:
		}
		v := p.latest.Load()
		if haveLast && v == lastVal {
			continue
		}
		if wait := p.period - time.Since(last); !last.IsZero() && wait > 0 {
			timer.Reset(wait)
			continue
		}
		if err := p.send(ctx, v); err != nil {
			return err
		}
		last, lastVal, haveLast = time.Now(), v, true
	}
}

func (p *Publisher) send(ctx context.Context, v uint64) error {
	p.sent.Add(1)
	err := p.sink.Report(ctx, func(a oomdpb.MemstatSink_report_Params) error {
		s, err := a.NewSample()
		if err != nil {
			return err
		}
		s.SetBytes(v)
		s.SetSeq(p.sent.Load())
		return s.SetClaimedSubject(p.claim)
	})
	if err != nil {
		return fmt.Errorf("memstat: report: %w", err)
	}
	return nil
}

// Close releases the sink and closes the connection.
func (p *Publisher) Close() error {
	p.sink.Release()
	if p.conn != nil {
		return p.conn.Close()
	}
	return nil
}

// RuntimeBytes is the Go allocator's live heap object bytes (runtime/metrics, ~260 ns;
// runtime.ReadMemStats would stop the world).
func RuntimeBytes() uint64 {
	s := [1]metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s[:])
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
