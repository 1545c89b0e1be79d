package policy

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// replayConfig is the Config every golden trace is replayed with; a trace sets its own
// policy with its first input.
var replayConfig = Config{Policy: DefaultPolicy(), RingSize: 64}

// TestReplayGolden replays every testdata/traces/*.trace and compares the output with
// the .golden file next to it (rewrite with -rewrite, the datadriven flag). This pins
// the event order, audit/terminate ordering and rate-limit schedule byte for byte.
func TestReplayGolden(t *testing.T) {
	traces, err := filepath.Glob("testdata/traces/*.trace")
	require.NoError(t, err)
	require.NotEmpty(t, traces)
	rewrite := flag.Lookup("rewrite")
	for _, path := range traces {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := os.Open(path)
			require.NoError(t, err)
			defer f.Close()
			inputs, err := DecodeTrace(f)
			require.NoError(t, err)
			got, err := Replay(replayConfig, inputs)
			require.NoError(t, err)
			golden := strings.TrimSuffix(path, ".trace") + ".golden"
			if rewrite != nil && rewrite.Value.String() == "true" {
				require.NoError(t, os.WriteFile(golden, got, 0o644))
				return
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "run with -rewrite to create it")
			assert.Equal(t, string(want), string(got), "replay of %s differs from %s", path, golden)
		})
	}
}

// shellSim plays the daemon shell around a core for a number of ticks: subjects
// that grow at different rates (two of them critical), a spoofer, audit acks one step
// late, terminate acks and exits a tick after each request, restarts with a new
// instance, and a policy change halfway. Every input it makes is recorded.
func shellSim(t *testing.T, cfg Config, ticks int) (recorded []Input, live string) {
	c, err := New(cfg)
	require.NoError(t, err)
	chk := newChecker(c, cfg)
	var out bytes.Buffer
	step := func(in Input) {
		recorded = append(recorded, in)
		rendered, stepErr, invErr := chk.step(in)
		require.NoError(t, invErr, "after %s", FormatInput(in))
		require.NoError(t, stepErr, "step %s", FormatInput(in))
		out.WriteString("> " + FormatInput(in) + "\n" + rendered)
	}
	ids := []string{"samgrd", "web", "db", "cache", "batch", "logd", "worker"}
	instance := map[string]uint64{}
	for _, id := range ids {
		instance[id] = 1
		step(Input{Kind: InputRegister, Subject: id, Instance: 1, Critical: id == "db"})
	}
	var toAck, toExit []TerminateRequest
	for i := 1; i <= ticks; i++ {
		for j, id := range ids {
			usage := uint64((i * (j + 1) * 37) % 700)
			step(Input{Kind: InputSample, Subject: id, Instance: instance[id], Claimed: id, Bytes: usage})
		}
		if i%7 == 0 {
			step(Input{Kind: InputSample, Subject: "worker", Instance: instance["worker"], Claimed: "db", Bytes: 1 << 30})
		}
		if i == ticks/2 {
			p := cfg.Policy
			p.HardBytes, p.KillBudget = 450, 1
			step(Input{Kind: InputPolicy, Policy: &p})
		}
		for _, tr := range toExit {
			step(Input{Kind: InputExited, Subject: tr.Subject, Instance: tr.Instance, Reason: "signal=TERM"})
			instance[tr.Subject]++
			step(Input{Kind: InputRegister, Subject: tr.Subject, Instance: instance[tr.Subject]})
		}
		toExit = toExit[:0]
		for _, tr := range toAck {
			step(Input{Kind: InputTerminateAck, Decision: tr.Decision})
			toExit = append(toExit, tr)
		}
		toAck = toAck[:0]
		step(Input{Kind: InputTick})
		if chk.lastWriter > chk.acked {
			step(Input{Kind: InputAuditAck, Seq: chk.lastWriter})
		}
		toAck = append(toAck, chk.takeTerminates()...)
	}
	return recorded, out.String()
}

// TestReplayByteIdentical records a simulated shell run, writes it as a trace, reads
// it back and replays it twice: the live run and both replays must be byte-identical.
func TestReplayByteIdentical(t *testing.T) {
	cfg := Config{Policy: Policy{SoftBytes: 300, HardBytes: 600, SampleMs: 100, KillBudget: 2, KillWindowTicks: 4}, RingSize: 32}
	recorded, live := shellSim(t, cfg, 60)
	for _, kind := range []string{"killed", "killThrottled", "killDenied", "memstatRejected", "policyChanged", "softCleared"} {
		require.True(t, strings.Contains(live, "kind="+kind), "the simulation should produce %s", kind)
	}

	var trace bytes.Buffer
	require.NoError(t, EncodeTrace(&trace, recorded))
	decoded, err := DecodeTrace(bytes.NewReader(trace.Bytes()))
	require.NoError(t, err)
	require.Equal(t, recorded, decoded, "trace round trip")

	first, err := Replay(cfg, decoded)
	require.NoError(t, err)
	second, err := Replay(cfg, decoded)
	require.NoError(t, err)
	assert.True(t, live == string(first), "replay differs from the live run")
	assert.True(t, bytes.Equal(first, second), "replay is not deterministic")
}

func TestDecodeTraceRefusesMalformed(t *testing.T) {
	cases := map[string]string{
		"no header":     `{"kind":"tick"}` + "\n",
		"wrong version": `{"trace":"oomd-policy","version":2}` + "\n",
		"unknown field": `{"trace":"oomd-policy","version":1}` + "\n" + `{"kind":"tick","extra":1}` + "\n",
		"unknown kind":  `{"trace":"oomd-policy","version":1}` + "\n" + `{"kind":"reboot"}` + "\n",
		"numeric kind":  `{"trace":"oomd-policy","version":1}` + "\n" + `{"kind":1}` + "\n",
		"truncated":     `{"trace":"oomd-policy","version":1}` + "\n" + `{"kind":"ti`,
	}
	for name, text := range cases {
		_, err := DecodeTrace(strings.NewReader(text))
		assert.Error(t, err, name)
	}
	in, err := DecodeTrace(strings.NewReader(`{"trace":"oomd-policy","version":1}` + "\n"))
	require.NoError(t, err)
	assert.Empty(t, in)
}
