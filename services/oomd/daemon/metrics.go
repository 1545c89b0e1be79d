package daemon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/oomd/policy"
)

// Metrics (opt-in, --metrics): a Prometheus view of the daemon, read at scrape time.
//
// Nothing is updated per subject per tick for it. A scrape is one call on the owner
// loop that copies the subject list and a few totals (see snapshot); the metrics are
// built from the copy off the loop. The only per-tick cost is one histogram
// observation of the tick's duration and a few counter increments on paths the loop
// already runs (events handed out, read failures).

// maxEventKinds bounds the event kinds counted per kind (the policy core has fewer;
// TestEventKindsFitTheirCounters keeps it so).
const maxEventKinds = 32

// shellStats are totals the shell keeps for metrics. Owned by the loop.
type shellStats struct {
	events       [maxEventKinds]uint64 // events handed out by the core, by kind
	kernelFailed uint64                // kernel readings that failed
	pageFailed   [page.Closed + 1]uint64
}

func (s *shellStats) event(k policy.EventKind) {
	if int(k) < len(s.events) {
		s.events[k]++
	}
}

// pageFailures are the page read results counted as failures, by their label.
var pageFailures = [...]page.Status{page.Torn, page.BadMagic, page.BadVersion}

// tickBuckets span a tick's work from tens of microseconds (a few subjects) to past a
// second (far beyond any sample period: a stalled shell).
var tickBuckets = prometheus.ExponentialBuckets(25e-6, 4, 9)

func newTickHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "oomd_tick_duration_seconds",
		Help:    "Time the shell spent on one tick: draining samples, reading pages and the kernel's counts, stepping the core and handing out its Ready.",
		Buckets: tickBuckets,
	})
}

var (
	descSubjects = prometheus.NewDesc("oomd_subjects",
		"Subjects watched now.", nil, nil)
	descSubjectBytes = prometheus.NewDesc("oomd_subject_bytes",
		"A subject's memory use by signal: kernel (the kernel's count), cooperative (the latest value it published), enforced (the reading its limits apply to). A signal not read yet is absent.",
		[]string{"subject", "signal"}, nil)
	descSoft = prometheus.NewDesc("oomd_subject_soft_limit_bytes",
		"A subject's soft limit in force.", []string{"subject"}, nil)
	descHard = prometheus.NewDesc("oomd_subject_hard_limit_bytes",
		"A subject's hard limit in force.", []string{"subject"}, nil)
	descEvents = prometheus.NewDesc("oomd_events_total",
		"Events the policy core emitted in this run, by kind (killDecided, killed, killDenied, killThrottled, memstatRejected, ...).",
		[]string{"kind"}, nil)
	descSamples = prometheus.NewDesc("oomd_samples_total",
		"Memstat samples by result: accepted, rejected (claimed another subject: spoofs, counted exactly while their events are rate-limited), dropped (unknown subject or stale instance).",
		[]string{"result"}, nil)
	descAuditPending = prometheus.NewDesc("oomd_audit_pending_records",
		"Audit records produced but not yet durable (logd or the spill file): kills wait for them.", nil, nil)
	descAuditDurable = prometheus.NewDesc("oomd_audit_durable_seq",
		"The highest audit writer seq acknowledged durable.", nil, nil)
	descAuditProduced = prometheus.NewDesc("oomd_audit_produced_seq",
		"The highest audit writer seq produced.", nil, nil)
	descLevel = prometheus.NewDesc("oomd_pressure_level",
		"System memory-pressure level: 0 normal, 1 warning, 2 imminentOom, 3 oom.", nil, nil)
	descAvail = prometheus.NewDesc("oomd_mem_available_bytes",
		"MemAvailable as last read (0 until read).", nil, nil)
	descKernelFailed = prometheus.NewDesc("oomd_kernel_read_failures_total",
		"Readings of a subject's kernel count that failed (the last good one stays in force).", nil, nil)
	descPageFailed = prometheus.NewDesc("oomd_memstat_page_read_failures_total",
		"Memstat page reads skipped, by reason: torn (no consistent snapshot), bad-magic, bad-version.",
		[]string{"reason"}, nil)
)

// metricsSnapshot is what one scrape copies on the loop.
type metricsSnapshot struct {
	subjects          []policy.SubjectStatus
	counters          policy.Counters
	stats             shellStats
	produced, durable uint64
	level             policy.Level
	avail             uint64
}

// snapshot copies what a scrape reports (loop only); it costs one allocation (the
// subject list) and a copy per subject.
func (d *Daemon) snapshot(s *metricsSnapshot) {
	s.subjects, _ = d.core.Subjects(math.MaxInt)
	s.counters = d.core.Counters()
	s.stats = d.stats
	s.produced, s.durable = d.core.AuditProduced(), d.core.AuditDurable()
	s.level, s.avail = d.core.Level()
}

// collector is the daemon's prometheus.Collector.
type collector struct{ d *Daemon }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSubjects, descSubjectBytes, descSoft, descHard, descEvents, descSamples,
		descAuditPending, descAuditDurable, descAuditProduced, descLevel, descAvail, descKernelFailed, descPageFailed} {
		ch <- d
	}
	c.d.tickSeconds.Describe(ch)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	var s metricsSnapshot
	if c.d.do(func() { c.d.snapshot(&s) }) != nil {
		return // the loop has ended: nothing to report
	}

	gauge := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descSubjects, uint64(len(s.subjects)))
	for _, ss := range s.subjects {
		if ss.HasKernel {
			gauge(descSubjectBytes, ss.Kernel, ss.Subject, "kernel")
		}
		if ss.Published {
			gauge(descSubjectBytes, ss.Cooperative, ss.Subject, "cooperative")
		}
		gauge(descSubjectBytes, ss.Bytes, ss.Subject, "enforced")
		gauge(descSoft, ss.SoftBytes, ss.Subject)
		gauge(descHard, ss.HardBytes, ss.Subject)
	}
	for k, n := range s.stats.events {
		if name := policy.EventKind(k).String(); name != "unknown" {
			counter(descEvents, n, name)
		}
	}
	counter(descSamples, s.counters.Accepted, "accepted")
	counter(descSamples, s.counters.Rejected, "rejected")
	counter(descSamples, s.counters.Dropped, "dropped")
	gauge(descAuditPending, s.produced-s.durable)
	gauge(descAuditDurable, s.durable)
	gauge(descAuditProduced, s.produced)
	gauge(descLevel, uint64(s.level))
	gauge(descAvail, s.avail)
	counter(descKernelFailed, s.stats.kernelFailed)
	for _, st := range pageFailures {
		counter(descPageFailed, s.stats.pageFailed[st], st.String())
	}
	ch <- c.d.tickSeconds
}

// NewMetricsRegistry returns a registry of its own (no global state) holding d's
// metrics and the standard Go runtime and process collectors.
func NewMetricsRegistry(d *Daemon) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d: d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// MetricsServer serves a daemon's metrics at /metrics (and nothing else) over plain
// HTTP. The data is read-only and unauthenticated: bind it to loopback.
type MetricsServer struct {
	l   net.Listener
	log *zap.Logger
}

// maxScrapesInFlight bounds concurrent scrapes, so a client hammering the endpoint
// cannot keep the owner loop busy.
const maxScrapesInFlight = 2

// ListenMetrics listens on addr (host:port; port 0 picks one) and returns the server,
// not yet serving, so that an unusable address fails start before anything else.
func ListenMetrics(addr string, log *zap.Logger) (*MetricsServer, error) {
	if addr == "" {
		return nil, errors.New("empty address: want host:port, e.g. 127.0.0.1:9466")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %q (want host:port, e.g. 127.0.0.1:9466): %w", addr, err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		log.Warn("metrics endpoint is not on loopback: anyone who can reach it reads subject names and usage",
			zap.Stringer("addr", ta))
	}
	return &MetricsServer{l: l, log: log.Named("metrics")}, nil
}

// Addr is the address the server listens on.
func (m *MetricsServer) Addr() net.Addr { return m.l.Addr() }

// Serve serves d's metrics until ctx ends, then shuts down within a few seconds and
// closes the listener. A failure is logged, not returned to the watchdog: metrics
// going away must not stop it watching.
func (m *MetricsServer) Serve(ctx context.Context, d *Daemon) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(NewMetricsRegistry(d), promhttp.HandlerOpts{
		MaxRequestsInFlight: maxScrapesInFlight,
		ErrorLog:            zap.NewStdLog(m.log),
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		// A fresh context: ctx is already over.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	m.log.Info("serving metrics", zap.String("url", "http://"+m.l.Addr().String()+"/metrics"))
	if err := srv.Serve(m.l); !errors.Is(err, http.ErrServerClosed) {
		m.log.Error("metrics endpoint stopped; the watchdog goes on without it", zap.Error(err))
		return
	}
	<-done
}
