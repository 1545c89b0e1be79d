package daemon

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/oomd/policy"
)

// startMetrics serves d's metrics on a free loopback port until the test ends and
// returns the /metrics URL.
func startMetrics(t *testing.T, d *Daemon) string {
	t.Helper()
	ms, err := ListenMetrics("127.0.0.1:0", zaptest.NewLogger(t))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { ms.Serve(ctx, d); close(served) }()
	t.Cleanup(func() { cancel(); <-served })
	return "http://" + ms.Addr().String() + "/metrics"
}

// scrape GETs url and parses the answer with Prometheus' own text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err, "the scrape parses as the Prometheus text format")
	return fams
}

// value returns the one sample of family name whose labels are exactly labels
// ("k=v" pairs); ok is false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName()+"="+l.GetValue())
		}
		if !slices.Equal(got, labels) { // both sorted: the encoder sorts labels by name
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

type sample struct {
	name   string
	labels []string
	want   float64
}

func (s sample) String() string { return s.name + "{" + strings.Join(s.labels, ",") + "}" }

func checkSamples(t *testing.T, fams map[string]*dto.MetricFamily, when string, samples []sample) {
	t.Helper()
	for _, s := range samples {
		got, ok := value(fams, s.name, s.labels...)
		if assert.True(t, ok, "%s: %s missing", when, s) {
			assert.Equal(t, s.want, got, "%s: %s", when, s)
		}
	}
}

// TestMetricsEndpoint drives a kill, a spoof and a bystander through a daemon, scrapes
// /metrics over HTTP at two points and checks exact values.
func TestMetricsEndpoint(t *testing.T) {
	d, aud, term, markers := newTestDaemon(t)
	url := startMetrics(t, d)

	handOver(t, d, "hog").report(t, "hog", 500, 1)
	evil := handOver(t, d, "evil")
	evil.report(t, "evil", 20, 1)
	evil.report(t, "hog", 1<<20, 3) // spoofs: rejected, and never hog's reading
	const ticks = 10
	for range ticks {
		d.tickNow()
	}
	aud.mu.Lock()
	recs := slices.Clone(aud.recs)
	aud.mu.Unlock()
	require.Len(t, recs, 2, "audit records: the rejected spoof, the kill decision")
	require.Equal(t, policy.EventKillDecided, recs[1].Kind)
	last := recs[1].WriterSeq

	// The decision waits for its audit record.
	fams := scrape(t, url)
	checkSamples(t, fams, "decided", []sample{
		{"oomd_subjects", nil, 2},
		{"oomd_subject_bytes", []string{"signal=enforced", "subject=hog"}, 500},
		{"oomd_subject_bytes", []string{"signal=cooperative", "subject=hog"}, 500},
		{"oomd_subject_bytes", []string{"signal=enforced", "subject=evil"}, 20},
		{"oomd_subject_soft_limit_bytes", []string{"subject=hog"}, 50},
		{"oomd_subject_hard_limit_bytes", []string{"subject=hog"}, 100},
		{"oomd_events_total", []string{"kind=subjectRegistered"}, 2},
		{"oomd_events_total", []string{"kind=killDecided"}, 1},
		{"oomd_events_total", []string{"kind=killed"}, 0},
		{"oomd_events_total", []string{"kind=killDenied"}, 0},
		{"oomd_events_total", []string{"kind=killThrottled"}, 0},
		{"oomd_events_total", []string{"kind=memstatRejected"}, 1},
		{"oomd_samples_total", []string{"result=accepted"}, 2},
		{"oomd_samples_total", []string{"result=rejected"}, 3},
		{"oomd_samples_total", []string{"result=dropped"}, 0},
		{"oomd_audit_pending_records", nil, 2},
		{"oomd_audit_produced_seq", nil, float64(last)},
		{"oomd_audit_durable_seq", nil, 0},
		{"oomd_tick_duration_seconds", nil, ticks},
		{"oomd_pressure_level", nil, 0},
		{"oomd_kernel_read_failures_total", nil, 0},
		{"oomd_memstat_page_read_failures_total", []string{"reason=torn"}, 0},
	})
	_, ok := value(fams, "oomd_subject_bytes", "signal=kernel", "subject=hog")
	assert.False(t, ok, "no kernel reading was taken, so none is shown")
	assert.Contains(t, fams, "go_goroutines", "the Go runtime collector")
	assert.Contains(t, fams, "process_open_fds", "the process collector")

	// Durable, terminated, exited: killed.
	aud.ack(last)
	select {
	case <-term.calls:
	case <-time.After(10 * time.Second):
		t.Fatal("no terminate after the audit ack")
	}
	d.Exited("hog", 1, 0, "signal=15")
	close(term.release)
	require.Eventually(t, func() bool { return markers.String() != "" }, 10*time.Second, time.Millisecond)

	fams = scrape(t, url)
	checkSamples(t, fams, "killed", []sample{
		{"oomd_subjects", nil, 1},
		{"oomd_events_total", []string{"kind=killDecided"}, 1},
		{"oomd_events_total", []string{"kind=killRequested"}, 1},
		{"oomd_events_total", []string{"kind=killed"}, 1},
		{"oomd_events_total", []string{"kind=subjectExited"}, 1},
		{"oomd_audit_pending_records", nil, 1},
		{"oomd_audit_produced_seq", nil, float64(last + 1)},
		{"oomd_audit_durable_seq", nil, float64(last)},
	})
	_, ok = value(fams, "oomd_subject_bytes", "signal=enforced", "subject=hog")
	assert.False(t, ok, "an exited subject is not shown")

	// The killed record becomes durable: no lag.
	aud.mu.Lock()
	require.Len(t, aud.recs, 3, "audit records: spoof, decision, killed")
	require.Equal(t, policy.EventKilled, aud.recs[2].Kind)
	aud.mu.Unlock()
	aud.ack(last + 1)
	checkSamples(t, scrape(t, url), "durable", []sample{
		{"oomd_audit_pending_records", nil, 0},
		{"oomd_audit_durable_seq", nil, float64(last + 1)},
	})
}

func TestMetricsServesOnlyMetrics(t *testing.T) {
	d, _, _, _ := newTestDaemon(t)
	url := startMetrics(t, d)
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/metrics/x", http.StatusNotFound},
		{http.MethodGet, "/debug/pprof/", http.StatusNotFound},
		{http.MethodPost, "", http.StatusMethodNotAllowed},
	} {
		req, err := http.NewRequest(c.method, url+c.path, nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err, "%s %s", c.method, c.path)
		resp.Body.Close()
		assert.Equal(t, c.want, resp.StatusCode, "%s %s", c.method, c.path)
	}
}

func TestListenMetricsRejectsABadAddress(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1", "127.0.0.1:notaport", "no-such-host.invalid:9466"} {
		_, err := ListenMetrics(addr, zaptest.NewLogger(t))
		require.Error(t, err, "%q", addr)
		assert.Contains(t, err.Error(), "host:port", "%q: the error says what is wanted", addr)
	}
}

// TestMetricsFollowNamingConventions runs Prometheus' own linter over the collector.
func TestMetricsFollowNamingConventions(t *testing.T) {
	d, _, _, _ := newTestDaemon(t)
	problems, err := testutil.CollectAndLint(collector{d: d})
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestEventKindsFitTheirCounters(t *testing.T) {
	var s shellStats
	for k := 0; policy.EventKind(k).String() != "unknown"; k++ {
		require.Less(t, k, len(s.events), fmt.Sprintf("event kind %s has no counter: raise maxEventKinds", policy.EventKind(k)))
	}
}

// The tick's share of the metrics (a histogram observation, per-kind counts) allocates
// nothing: a quiet tick over 1 000 subjects allocates nothing at all.
func TestQuietTickDoesNotAllocate(t *testing.T) {
	d := metricsBenchDaemon(t, 1000)
	d.tickNow()
	assert.Zero(t, testing.AllocsPerRun(100, d.tick))
}

// A page whose header the subject wrote over is counted as a read failure, by reason.
func TestMetricsCountPageReadFailures(t *testing.T) {
	d, _, _, _ := newTestDaemon(t)
	url := startMetrics(t, d)
	rw, err := page.Create("oomd-memstat:scribbler")
	require.NoError(t, err)
	defer rw.Close()
	handoffPage(t, d, "scribbler", rw)
	_, err = rw.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, page.OffMagic)
	require.NoError(t, err)
	d.tickNow()
	d.tickNow()
	checkSamples(t, scrape(t, url), "scribbled", []sample{
		{"oomd_memstat_page_read_failures_total", []string{"reason=bad-magic"}, 2},
		{"oomd_memstat_page_read_failures_total", []string{"reason=bad-version"}, 0},
		{"oomd_memstat_page_read_failures_total", []string{"reason=torn"}, 0},
		{"oomd_events_total", []string{"kind=memstatInvalid"}, 1},
	})
}
