package daemon

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"oomd.dev/oomd/services/oomd/policy"
)

// metricsBenchDaemon is a daemon with n subjects, each with a published and a kernel
// reading, and manual ticks (so the loop does nothing but the scrapes).
func metricsBenchDaemon(b testing.TB, n int) *Daemon {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes = 1<<48, 1<<49
	d, err := New(Config{Policy: p, Log: zap.NewNop()}, benchAuditor{}, benchTerminator{})
	if err != nil {
		b.Fatal(err)
	}
	runLoop(b, d)
	for i := range n {
		name := fmt.Sprintf("sub-%05d", i)
		if err := d.Register(&slot{subject: name, instance: 1}); err != nil {
			b.Fatal(err)
		}
		d.stepNow(policy.Input{Kind: policy.InputSample, Subject: name, Instance: 1, Claimed: name, Bytes: uint64(i) << 20})
		d.stepNow(policy.Input{Kind: policy.InputKernel, Subject: name, Instance: 1, Bytes: uint64(i)<<20 + 4096})
	}
	d.tickNow()
	return d
}

// BenchmarkMetricsScrape is the cost of one scrape of /metrics at 1 000 subjects:
// "loop" is the part on the owner loop (the snapshot), "oomd" a whole scrape
// of the daemon's own collector through the promhttp handler (text format), "all" the
// same with the Go and process collectors as --metrics serves it.
func BenchmarkMetricsScrape(b *testing.B) {
	const subjects = 1000
	d := metricsBenchDaemon(b, subjects)
	b.Run(fmt.Sprintf("loop/subjects=%d", subjects), func(b *testing.B) {
		b.ReportAllocs()
		var s metricsSnapshot
		for b.Loop() {
			if err := d.do(func() { d.snapshot(&s) }); err != nil {
				b.Fatal(err)
			}
		}
		if len(s.subjects) != subjects {
			b.Fatalf("%d subjects in the snapshot, want %d", len(s.subjects), subjects)
		}
	})
	own := prometheus.NewRegistry()
	own.MustRegister(collector{d: d})
	for _, c := range []struct {
		name string
		reg  *prometheus.Registry
	}{{"oomd", own}, {"all", NewMetricsRegistry(d)}} {
		b.Run(fmt.Sprintf("%s/subjects=%d", c.name, subjects), func(b *testing.B) {
			h := promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{})
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			var size int
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(size), "bytes/scrape")
		})
	}
}
