// Package memstat publishes a process's cooperative memory signal to oomd.
//
// A process started by execd inherits a delivery socket (OOMD_MEMSTAT_FD) on which execd
// passes it a direct connection to each watchdog instance: one at start (once a watchdog
// runs) and a fresh one whenever the watchdog was restarted. oomd bound every such
// connection to the subject execd named, so nothing the process sends can change who it
// is. The Publisher follows the deliveries: on each new connection it offers its
// bootstrap (e.g. a TestHook) again and re-publishes the latest value at once, so a
// restarted oomd sees the process without waiting for the value to change.
//
// The Publisher keeps only the latest value: Set never blocks and never allocates, and at
// most one sample per period leaves the process (coalescing), so a busy caller costs oomd
// one sample per period whatever it does.
//
// When execd also gave the process a memstat page (EnvPageFD, docs/memstat-page.md), the
// page is the data path: Set stores the value on the page at once (a seqlock cycle, ~20
// ns, no RPC, no goroutine, no period), oomd reads it on its own tick, and Run only waits
// for ctx. The delivery socket, when present, is still followed so that the bootstrap
// (e.g. a TestHook) stays reachable. A process with a page and no delivery socket works
// too.
//
//	pub, err := memstat.Connect(ctx, memstat.Options{Period: 100 * time.Millisecond}, log)
//	if err != nil { ... }      // not started by execd: run without publishing
//	defer pub.Close()
//	go pub.Run(ctx)
//	pub.Set(heldBytes) // what the process holds, as often as you like
//
// The value is what the process says it holds. It is not kernel RSS: a process can
// under-report or not report at all (docs/reliability/oom-policy.md).
package memstat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/lib/memstat/page"
)

// Options configure a Publisher.
type Options struct {
	// Period is the minimum interval between two samples (default 100 ms).
	Period time.Duration
	// Claim is the subject id put in the payload. oomd ignores it for attribution and
	// rejects a sample whose claim differs from the connection's identity; honest
	// publishers leave it empty to claim their own id (OOMD_SUBJECT).
	Claim string
	// Bootstrap is offered to oomd on every connection (e.g. a TestHook); optional. The
	// Publisher takes over the reference and releases it on Close.
	Bootstrap capnp.Client
}

// flowWindow bounds the bytes of samples in flight to oomd; one sample is ~100 bytes,
// so the window is far above a single message (a FixedLimiter panics otherwise).
const flowWindow = 16 << 10

// closeTimeout bounds closing a replaced connection (docs/capnp-traps.md, trap 2).
const closeTimeout = 2 * time.Second

// ErrDeliveryClosed is returned by Run when execd closed the delivery socket: no
// watchdog will ever connect (there is none in the manifest, or execd is gone).
var ErrDeliveryClosed = errors.New("memstat: delivery socket closed (no watchdog, or execd gone)")

// Publisher sends the latest value to oomd at most once per period.
type Publisher struct {
	log       *zap.Logger
	period    time.Duration
	claim     string
	bootstrap capnp.Client

	mu    sync.Mutex
	conn  *rpc.Conn // current connection; nil when built with New or before the first delivery
	sink  oomdpb.MemstatSink
	gen   uint64 // increments per connection
	close bool

	page *page.Writer // the data path when execd gave us a page; nil otherwise

	delivery     *net.UnixConn
	deliveryDone chan struct{} // closed when the delivery socket ended
	reconnected  chan struct{} // capacity 1: a new connection arrived

	latest  atomic.Uint64
	haveVal atomic.Bool
	changed chan struct{} // capacity 1: a pending "value changed" wake-up
	sent    atomic.Uint64 // samples sent, for tests and status
	conns   atomic.Uint64 // connections received, for tests and status
}

// Connect opens the inherited page (EnvPageFD) and delivery socket (OOMD_MEMSTAT_FD) and
// returns a Publisher. With a page, Set publishes there. The delivery socket, optional
// when there is a page, brings a connection to each watchdog instance: without a page
// samples go over it, and either way the bootstrap is offered on it. Connect does not
// wait for the first connection: a process started before the watchdog publishes once
// one exists.
func Connect(ctx context.Context, opts Options, log *zap.Logger) (*Publisher, error) {
	w, havePage, err := page.FromEnv()
	if err != nil {
		return nil, fmt.Errorf("memstat: %w", err)
	}
	var d *net.UnixConn
	if !havePage || os.Getenv(rpcx.EnvMemstatFD) != "" {
		if d, err = rpcx.InheritedUnixConn(rpcx.EnvMemstatFD); err != nil {
			if w != nil {
				w.Close()
			}
			return nil, err
		}
	}
	p := newPublisher(opts, log)
	p.page = w
	if d != nil {
		p.delivery = d
		go p.receive()
	}
	return p, nil
}

func newPublisher(opts Options, log *zap.Logger) *Publisher {
	if opts.Period <= 0 {
		opts.Period = 100 * time.Millisecond
	}
	if opts.Claim == "" {
		opts.Claim = subjectFromEnv()
	}
	return &Publisher{
		log:          log.Named("memstat"),
		period:       opts.Period,
		claim:        opts.Claim,
		bootstrap:    opts.Bootstrap,
		changed:      make(chan struct{}, 1),
		reconnected:  make(chan struct{}, 1),
		deliveryDone: make(chan struct{}),
	}
}

// receive takes every connection execd delivers until the delivery socket ends.
func (p *Publisher) receive() {
	defer close(p.deliveryDone)
	for {
		c, err := rpcx.ReceiveConn(p.delivery)
		if err != nil {
			p.mu.Lock()
			closing := p.close
			p.mu.Unlock()
			if !closing {
				p.log.Warn("memstat delivery socket ended", zap.Error(err))
			}
			return
		}
		var boot capnp.Client
		if p.bootstrap.IsValid() {
			boot = p.bootstrap.AddRef()
		}
		conn := rpcx.NewConn(c, boot, p.log)
		// Bootstrap is pipelined: it needs no round trip before the first report.
		sink := oomdpb.MemstatSink(conn.Bootstrap(context.Background()))
		if !p.setSink(conn, sink) {
			sink.Release()
			closeBounded(conn)
			return
		}
		n := p.conns.Add(1)
		p.log.Debug("connected to the watchdog", zap.Uint64("connection", n))
		select {
		case p.reconnected <- struct{}{}:
		default:
		}
	}
}

// setSink makes (conn, sink) current and closes the previous connection. It reports
// false after Close.
func (p *Publisher) setSink(conn *rpc.Conn, sink oomdpb.MemstatSink) bool {
	p.mu.Lock()
	if p.close {
		p.mu.Unlock()
		return false
	}
	oldConn, oldSink := p.conn, p.sink
	p.conn, p.sink = conn, sink
	p.gen++
	p.mu.Unlock()
	if oldSink.IsValid() {
		oldSink.Release()
	}
	if oldConn != nil {
		go closeBounded(oldConn)
	}
	return true
}

func closeBounded(c *rpc.Conn) {
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeTimeout):
	}
}

// Set records the latest value. It never blocks (on a page it may wait for a write
// cycle of another goroutine or process holding the same page: a few stores, bounded).
func (p *Publisher) Set(bytes uint64) {
	p.latest.Store(bytes)
	p.haveVal.Store(true)
	if p.page != nil {
		if p.page.Publish(bytes) == nil {
			p.sent.Add(1)
		}
		return
	}
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// OnPage reports whether samples go to a memstat page rather than over RPC.
func (p *Publisher) OnPage() bool { return p.page != nil }

// Sent is the number of samples sent so far (published on the page, or over RPC).
func (p *Publisher) Sent() uint64 { return p.sent.Load() }

// Connections is the number of watchdog connections received so far.
func (p *Publisher) Connections() uint64 { return p.conns.Load() }

// Done is closed when no connection to oomd will come any more (the delivery socket
// ended); nil for a Publisher built with New or without a delivery socket.
func (p *Publisher) Done() <-chan struct{} {
	if p.delivery == nil {
		return nil
	}
	return p.deliveryDone
}

// Run sends samples until ctx ends or the delivery socket ends (ErrDeliveryClosed). A
// value that changes many times within a period is sent once, at most one period after
// the previous sample. After each new connection the latest value is sent at once. A
// failed report only waits for the next connection: the watchdog may be restarting.
// With a page there is nothing to send (Set already published): Run waits for ctx and
// returns nil, even if the delivery socket ends. Call Run once.
func (p *Publisher) Run(ctx context.Context) error {
	if p.page != nil {
		<-ctx.Done()
		return nil
	}
	var last time.Time
	lastVal, haveLast := uint64(0), false
	// sink is Run's own reference to the current connection's sink, with the flow
	// limiter on it (capnp trap 4 in docs/capnp-traps.md: the limiter sits on the reference called
	// through, and AddRef returns one without it).
	var sink oomdpb.MemstatSink
	var gen uint64     // connection sink belongs to
	var sentGen uint64 // connection the last sample went out on
	failed := false    // a report on this connection failed: wait for the next one
	defer func() { sink.Release() }()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.Done():
			return ErrDeliveryClosed
		case <-p.reconnected:
		case <-p.changed:
		case <-timer.C:
		}
		if g := p.generation(); g != gen {
			sink.Release()
			sink, gen = p.sinkRef()
			failed = false
		}
		// A new connection gets the latest value at once, whatever the period.
		force := gen != sentGen
		if !sink.IsValid() || failed || !p.haveVal.Load() {
			continue // no usable connection yet: the next one sends the latest value
		}
		v := p.latest.Load()
		if !force && haveLast && v == lastVal {
			continue
		}
		if wait := p.period - time.Since(last); !force && !last.IsZero() && wait > 0 {
			timer.Reset(wait)
			continue
		}
		if err := p.send(ctx, sink, v); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.log.Debug("report failed; waiting for the next connection", zap.Error(err))
			failed = true
			continue
		}
		last, lastVal, haveLast, sentGen = time.Now(), v, true, gen
	}
}

func (p *Publisher) generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

// sinkRef returns a new reference to the current sink, with its own flow limiter, and
// the generation it belongs to.
func (p *Publisher) sinkRef() (oomdpb.MemstatSink, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.sink.IsValid() {
		return oomdpb.MemstatSink{}, p.gen
	}
	s := p.sink.AddRef()
	s.SetFlowLimiter(flowcontrol.NewFixedLimiter(flowWindow))
	return s, p.gen
}

func (p *Publisher) send(ctx context.Context, sink oomdpb.MemstatSink, v uint64) error {
	n := p.sent.Add(1)
	err := sink.Report(ctx, func(a oomdpb.MemstatSink_report_Params) error {
		s, err := a.NewSample()
		if err != nil {
			return err
		}
		s.SetBytes(v)
		s.SetSeq(n)
		return s.SetClaimedSubject(p.claim)
	})
	if err != nil {
		return fmt.Errorf("memstat: report: %w", err)
	}
	return nil
}

// Close stops following deliveries, releases the sink and closes the connection. On a
// page it marks the page closed (oomd sees the last value as the publisher's last word)
// and unmaps it.
func (p *Publisher) Close() error {
	p.mu.Lock()
	p.close = true
	conn, sink := p.conn, p.sink
	p.conn, p.sink = nil, oomdpb.MemstatSink{}
	p.mu.Unlock()
	if p.delivery != nil {
		p.delivery.Close()
	}
	if sink.IsValid() {
		sink.Release()
	}
	if p.bootstrap.IsValid() {
		p.bootstrap.Release()
	}
	if conn != nil {
		closeBounded(conn)
	}
	if p.page != nil {
		if err := p.page.Close(); err != nil && !errors.Is(err, page.ErrClosed) {
			return fmt.Errorf("memstat: %w", err)
		}
	}
	return nil
}
