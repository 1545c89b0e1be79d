package e2e

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/ctlclient"
)

var metricsURL = regexp.MustCompile(`http://127\.0\.0\.1:[0-9]+/metrics`)

// TestMetricsAfterAKill: the real oomd started by execd with --metrics on a free
// loopback port serves /metrics, and after a kill the scrape, parsed by Prometheus' own
// text parser, counts exactly one decision and one kill.
func TestMetricsAfterAKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := strings.Replace(manifest(fmt.Sprintf(hogEntry, "", 1000)), `"--enable-inject",`, `"--enable-inject", "--metrics", "127.0.0.1:0",`, 1)
	s := startStack(t, m, map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	url := metricsURL.FindString(s.waitLine("serving metrics", 20*time.Second))
	require.NotEmpty(t, url, "the serving line names the URL")
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)
	injectToKill(t, ctx, c, "hog", 16<<20)
	_, err = c.WaitEvent(ctx, "killed", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)

	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	events := map[string]float64{}
	for _, m := range fams["oomd_events_total"].GetMetric() {
		events[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	assert.Equal(t, 1.0, events["killDecided"])
	assert.Equal(t, 1.0, events["killed"])
	assert.Equal(t, 0.0, events["killDenied"])
	require.Contains(t, fams, "oomd_tick_duration_seconds")
	assert.Positive(t, fams["oomd_tick_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount())
	require.NoError(t, s.stop(20*time.Second))
}
