package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"oomd.dev/oomd/services/oomd/policy"
)

// TestVictimDecisionLogSaysWhy: the one INFO line of a pressure victim's decision and
// the terminate request's line carry the reason (score and runners-up), so an operator
// reading the log alone knows why that subject went.
func TestVictimDecisionLogSaysWhy(t *testing.T) {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes = 500, 1000
	p.Levels = policy.LevelThresholds{WarningBytes: 1000, ImminentOOMBytes: 600, OOMBytes: 300, HysteresisBytes: 100}
	core, logs := observer.New(zapcore.InfoLevel)
	aud := &fakeAuditor{}
	term := fakeTerminator{calls: make(chan policy.TerminateRequest, 8)}
	d, err := New(Config{Policy: p, Log: zap.New(core)}, aud, term)
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	runLoop(t, d)

	handOver(t, d, "big").report(t, "big", 900, 1)
	handOver(t, d, "small").report(t, "small", 200, 1)
	d.tickNow()
	d.stepNow(policy.Input{Kind: policy.InputMemAvailable, Bytes: 500}) // imminentOom
	d.tickNow()

	decided := logs.FilterField(zap.String("event", "killDecided")).All()
	require.Len(t, decided, 1, "one victim decision")
	f := decided[0].ContextMap()
	assert.Equal(t, "big", f["subject"])
	assert.Contains(t, decided[0].Message, "kill decided for big: ", "the line says why in words")
	assert.Equal(t, "pressure victim: level=imminentOom score=900 runners-up=small:200", f["reason"])

	aud.mu.Lock()
	seq := aud.recs[len(aud.recs)-1].WriterSeq
	aud.mu.Unlock()
	aud.ack(seq)
	var req policy.TerminateRequest
	select {
	case req = <-term.calls: // logged before the call
	case <-time.After(10 * time.Second):
		t.Fatal("no terminate after the audit ack")
	}
	assert.Equal(t, policy.ReasonVictim, req.Reason)
	require.Equal(t, 1, logs.FilterMessage("requesting terminate").Len())
	line := logs.FilterMessage("requesting terminate").All()[0].ContextMap()
	assert.True(t, strings.HasPrefix(line["reason"].(string), policy.ReasonVictim), "terminate log line: %v", line)
}
