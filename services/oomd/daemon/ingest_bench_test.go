package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
)

// Memstat ingest: samples/s through oomd's real sink path (a SubjectHandoff accepted by
// acceptHandoff, a sinkServer on a go-capnp connection with rpcx.PublisherLimits, the
// tick loop draining the slots every 10 ms) against a bare go-capnp MemstatSink that
// does nothing (plain transport.NewStream, no limits), with the same client, the same
// message and real socketpairs. Each publisher has its own connection and streams its
// share of b.N samples as fast as the stream allows, then waits for every return.
// Command and figures: docs/perf.md.
//
//	go test -run '^$' -bench Ingest -benchtime 100000x -count 6 ./services/oomd/daemon/

type nopSink struct{}

func (nopSink) Report(context.Context, oomdpb.MemstatSink_report) error { return nil }

type benchAuditor struct{}

func (benchAuditor) Submit([]policy.AuditRecord)               {}
func (benchAuditor) Start(context.Context, func(uint64)) error { return nil }

type benchTerminator struct{}

func (benchTerminator) Terminate(context.Context, policy.TerminateRequest) (string, error) {
	return "", nil
}

// benchDaemon is a running daemon with 10 ms ticks and limits no sample reaches.
func benchDaemon(b testing.TB, ctx context.Context) *Daemon {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes, p.SampleMs = 1<<48, 1<<49, 10
	d, err := New(Config{Policy: p, RingSize: 1024, Log: zap.NewNop()}, benchAuditor{}, benchTerminator{})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		b.Fatal(err)
	}
	go d.Run(ctx)
	return d
}

// handoff gives d the server end of a fresh socketpair for subject, exactly as execd's
// broker does, and returns the publisher's end.
func handoff(b testing.TB, d *Daemon, subject string) net.Conn {
	srv, cli, err := rpcx.Socketpair()
	if err != nil {
		b.Fatal(err)
	}
	msg, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
	h, _ := oomdpb.NewRootSubjectHandoff(seg)
	h.SetSubject(subject)
	h.SetInstance(1)
	if err := d.acceptHandoff(msg, []*os.File{srv}); err != nil {
		b.Fatal(err)
	}
	c, err := rpcx.FileToConn(cli)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// bareSink serves a do-nothing MemstatSink on the server end of a fresh socketpair.
func bareSink(b testing.TB) (net.Conn, *rpc.Conn) {
	srv, cli, err := rpcx.Socketpair()
	if err != nil {
		b.Fatal(err)
	}
	sc, err := rpcx.FileToConn(srv)
	if err != nil {
		b.Fatal(err)
	}
	conn := rpc.NewConn(transport.NewStream(sc), &rpc.Options{
		BootstrapClient: capnp.Client(oomdpb.MemstatSink_ServerToClient(nopSink{})),
	})
	c, err := rpcx.FileToConn(cli)
	if err != nil {
		b.Fatal(err)
	}
	return c, conn
}

type publisher struct {
	subject string
	conn    *rpc.Conn
	sink    oomdpb.MemstatSink
}

func newPublisher(ctx context.Context, c net.Conn, subject string, limiter bool) *publisher {
	conn := rpcx.NewConn(c, capnp.Client{}, nil)
	sink := oomdpb.MemstatSink(conn.Bootstrap(ctx))
	if limiter {
		sink.SetFlowLimiter(flowcontrol.NewFixedLimiter(16 << 10)) // lib/memstat's window
	}
	return &publisher{subject: subject, conn: conn, sink: sink}
}

type oomdpb_report = oomdpb.MemstatSink_report_Params

// fill writes one sample: the same message for every sink and benchmark.
func fill(a oomdpb_report, bytes, seq uint64, subject string) error {
	s, err := a.NewSample()
	if err != nil {
		return err
	}
	s.SetBytes(bytes)
	s.SetSeq(seq)
	return s.SetClaimedSubject(subject)
}

func (p *publisher) send(ctx context.Context, n int) error {
	for i := range n {
		err := p.sink.Report(ctx, func(a oomdpb_report) error { return fill(a, uint64(i)<<12, uint64(i), p.subject) })
		if err != nil {
			return err
		}
	}
	return p.sink.WaitStreaming()
}

func (p *publisher) close() {
	p.sink.Release()
	go p.conn.Close()
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkIngest(b *testing.B) {
	for _, pubs := range []int{1, 100, 1000} {
		for _, limiter := range []bool{false, true} {
			for _, sink := range []string{"oomd", "bare"} {
				lim := "none"
				if limiter {
					lim = "fixed16k"
				}
				b.Run(fmt.Sprintf("pubs=%d/limiter=%s/sink=%s", pubs, lim, sink), func(b *testing.B) {
					benchIngest(b, pubs, limiter, sink == "oomd")
				})
			}
		}
	}
}

func benchIngest(b *testing.B, pubs int, limiter, oomd bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var d *Daemon
	if oomd {
		d = benchDaemon(b, ctx)
	}
	ps := make([]*publisher, pubs)
	var servers []*rpc.Conn
	for i := range ps {
		subject := fmt.Sprintf("pub-%04d", i)
		var c net.Conn
		if oomd {
			c = handoff(b, d, subject)
		} else {
			var sc *rpc.Conn
			c, sc = bareSink(b)
			servers = append(servers, sc)
		}
		ps[i] = newPublisher(ctx, c, subject, limiter)
	}
	defer func() {
		for _, p := range ps {
			p.close()
		}
		for _, s := range servers {
			go s.Close()
		}
		if d != nil {
			_ = d.do(func() {
				for _, s := range d.slots {
					go s.conn.Close()
				}
			})
		}
	}()
	// Warm up: every connection resolved its bootstrap and carried a sample.
	for _, p := range ps {
		if err := p.send(ctx, 1); err != nil {
			b.Fatal(err)
		}
	}
	per := max(1, b.N/pubs)
	cpu0 := cpuNow()
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.send(ctx, per); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	total := float64(per * pubs)
	b.ReportMetric(total/b.Elapsed().Seconds(), "samples/s")
	b.ReportMetric(float64(cpuNow()-cpu0)/total, "cpu-ns/sample")
	b.ReportMetric(0, "ns/op")
}
