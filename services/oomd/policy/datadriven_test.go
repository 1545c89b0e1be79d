package policy

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/stretchr/testify/require"
)

// TestScenarios runs the scenario files in testdata/scenarios/. Each file is a sequence of
// commands whose expected output follows "----"; regenerate with
//
//	go test ./services/oomd/policy/ -run TestScenarios -rewrite
//
// and review the diff. Every command that steps the core prints what that step put in
// Ready (audit, terminate, events; "ok" if nothing), the invariant checker runs after
// every step, and when a core's run ends its recorded inputs are written as a trace,
// read back and replayed, and the replay must match the live run byte for byte.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata/scenarios", func(t *testing.T, path string) {
		e := &scenarioEnv{}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			h, ok := scenarioHandlers[d.Cmd]
			if !ok {
				t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
			}
			if d.Cmd != "new" && e.c == nil {
				t.Fatalf("%s: %q before new", d.Pos, d.Cmd)
			}
			return h(t, e, d)
		})
		e.finish(t)
	})
}

type scenarioEnv struct {
	cfg        Config
	c          *Core
	chk        *checker
	inputs     []Input
	transcript bytes.Buffer // the live run, in Replay's format
}

var scenarioHandlers map[string]func(*testing.T, *scenarioEnv, *datadriven.TestData) string

func init() {
	scenarioHandlers = map[string]func(*testing.T, *scenarioEnv, *datadriven.TestData) string{
		"new":               handleNew,
		"policy":            handlePolicy,
		"register":          handleRegister,
		"sample":            handleSample,
		"tick":              handleTick,
		"audit-ack":         handleAuditAck,
		"audit-spilled":     handleAuditSpilled,
		"terminate-ack":     handleTerminateAck,
		"terminate-refused": handleTerminateRefused,
		"exited":            handleExited,
		"events":            handleEvents,
		"subjects":          handleSubjects,
		"counters":          handleCounters,
		"mem-available":     handleMemAvailable,
		"reboot-request":    handleRebootRequest,
		"teardown-done":     handleTeardownDone,
		"system":            handleSystem,
		"halt-timeout":      handleHaltTimeout,
		"kernel":            handleKernel,
		"memstat-invalid":   handleMemstatInvalid,
		"pressure":          handlePressure,
		"victim-preview":    handleVictimPreview,
	}
}

// finish replays the recorded run from its trace and compares it with the live one.
func (e *scenarioEnv) finish(t *testing.T) {
	if e.c == nil {
		return
	}
	var trace bytes.Buffer
	require.NoError(t, EncodeTrace(&trace, e.inputs))
	decoded, err := DecodeTrace(&trace)
	require.NoError(t, err)
	require.Equal(t, len(e.inputs), len(decoded), "inputs lost in the trace")
	out, err := Replay(e.cfg, decoded)
	require.NoError(t, err)
	require.Equal(t, e.transcript.String(), string(out), "replay differs from the live run")
	e.c = nil
}

// step applies one input, records it, and renders its output.
func (e *scenarioEnv) step(t *testing.T, in Input) string {
	e.inputs = append(e.inputs, in)
	rd, stepErr, invErr := e.chk.step(in)
	require.NoError(t, invErr, "invariant broken after %s", FormatInput(in))
	var out strings.Builder
	if stepErr != nil {
		out.WriteString("error: " + stepErr.Error() + "\n")
	}
	out.WriteString(rd)
	fmt.Fprintf(&e.transcript, "> %s\n%s", FormatInput(in), out.String())
	if out.Len() == 0 {
		return "ok"
	}
	return out.String()
}

func scanPolicy(t *testing.T, d *datadriven.TestData, p *Policy) {
	d.MaybeScanArgs(t, "soft", &p.SoftBytes)
	d.MaybeScanArgs(t, "hard", &p.HardBytes)
	d.MaybeScanArgs(t, "sample-ms", &p.SampleMs)
	d.MaybeScanArgs(t, "budget", &p.KillBudget)
	d.MaybeScanArgs(t, "window", &p.KillWindowTicks)
	d.MaybeScanArgs(t, "oom-timeout-ms", &p.OOMTimeoutMs)
	if arg, ok := d.Arg("levels"); ok {
		require.Len(t, arg.Vals, 4, "%s: levels=(warning,imminentOom,oom,hysteresis)", d.Pos)
		var v [4]uint64
		for i := range v {
			n, err := strconv.ParseUint(arg.Vals[i], 10, 64)
			require.NoError(t, err, d.Pos)
			v[i] = n
		}
		p.Levels = LevelThresholds{WarningBytes: v[0], ImminentOOMBytes: v[1], OOMBytes: v[2], HysteresisBytes: v[3]}
	}
	if arg, ok := d.Arg("psi"); ok {
		require.Len(t, arg.Vals, 4, "%s: psi=(warning,imminentOom,oom,hysteresis)", d.Pos)
		var v [4]uint32
		for i := range v {
			n, err := strconv.ParseUint(arg.Vals[i], 10, 32)
			require.NoError(t, err, d.Pos)
			v[i] = uint32(n)
		}
		p.Levels.PSIWarning, p.Levels.PSIImminentOOM, p.Levels.PSIOOM, p.Levels.PSIHysteresis = v[0], v[1], v[2], v[3]
	}
	if arg, ok := d.Arg("critical"); ok {
		p.Critical = append([]string(nil), arg.Vals...)
	}
	if arg, ok := d.Arg("signal"); ok {
		require.NoError(t, p.Signal.UnmarshalText([]byte(arg.Vals[0])), d.Pos)
	}
	if arg, ok := d.Arg("victim-level"); ok {
		require.NoError(t, p.Victims.Level.UnmarshalText([]byte(arg.Vals[0])), d.Pos)
	}
	d.MaybeScanArgs(t, "prefer-points", &p.Victims.PreferPoints)
	d.MaybeScanArgs(t, "avoid-points", &p.Victims.AvoidPoints)
	d.MaybeScanArgs(t, "settle", &p.Victims.SettleTicks)
	d.MaybeScanArgs(t, "dry-run", &p.Victims.DryRun)
	for name, l := range map[string]*[]string{"prefer": &p.Victims.Prefer, "avoid": &p.Victims.Avoid, "never": &p.Victims.Never} {
		if arg, ok := d.Arg(name); ok {
			*l = slices.DeleteFunc(slices.Clone(arg.Vals), func(v string) bool { return v == "" }) // () clears
		}
	}
	d.MaybeScanArgs(t, "under-margin", &p.UnderReport.MarginBytes)
	d.MaybeScanArgs(t, "under-ticks", &p.UnderReport.Ticks)
	if arg, ok := d.Arg("override"); ok {
		p.Overrides = nil
		for _, v := range arg.Vals {
			f := strings.Split(v, ":")
			if len(f) == 4 { // subject:soft:hard:signal
				var sig Signal
				require.NoError(t, sig.UnmarshalText([]byte(f[3])), d.Pos)
				defer func(i int) { p.Overrides[i].Signal = &sig }(len(p.Overrides))
				f = f[:3]
			}
			require.Len(t, f, 3, "%s: override is subject:soft:hard[:signal]", d.Pos)
			soft, err := strconv.ParseUint(f[1], 10, 64)
			require.NoError(t, err, d.Pos)
			hard, err := strconv.ParseUint(f[2], 10, 64)
			require.NoError(t, err, d.Pos)
			p.Overrides = append(p.Overrides, SubjectLimit{Subject: f[0], SoftBytes: soft, HardBytes: hard})
		}
	}
	d.MaybeScanArgs(t, "kill-dry-run", &p.DryRun)
	if arg, ok := d.Arg("subject-dry-run"); ok { // (<id>:true|false,...), on existing overrides
		for _, v := range arg.Vals {
			id, val, _ := strings.Cut(v, ":")
			dry, err := strconv.ParseBool(val)
			require.NoError(t, err, d.Pos)
			k := slices.IndexFunc(p.Overrides, func(o SubjectLimit) bool { return o.Subject == id })
			require.GreaterOrEqual(t, k, 0, "%s: subject-dry-run %s needs an override", d.Pos, id)
			p.Overrides[k].DryRun = &dry
		}
	}
}

// new [ring=<n>] [audit-base=<n>] [soft=<n>] [hard=<n>] [sample-ms=<n>] [budget=<n>]
//
//	[window=<n>] [critical=(<id>,...)] [override=(<id>:<soft>:<hard>[:<signal>],...)]
//	[signal=max|kernel|cooperative] [under-margin=<n>] [under-ticks=<n>]
//	[levels=(<warning>,<imminentOom>,<oom>,<hysteresis>)] [oom-timeout-ms=<n>]
//	[victim-level=off|warning|imminentOom] [prefer-points=<n>] [avoid-points=<n>]
//	[settle=<ticks>] [dry-run=true|false] [prefer=(<id>,...)] [avoid=(...)] [never=(...)]
//	[kill-dry-run=true|false] [subject-dry-run=(<id>:true|false,...)] (dry-run is the
//	victims' dry run; kill-dry-run is Policy.DryRun; subject-dry-run sets an override's)
//
// Starts a fresh core (ending and replay-checking the previous one). Policy fields not
// given keep a small test default: soft=100 hard=200 sample-ms=100 budget=2 window=10.
func handleNew(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	e.finish(t)
	cfg := Config{Policy: Policy{SoftBytes: 100, HardBytes: 200, SampleMs: 100, KillBudget: 2, KillWindowTicks: 10}}
	d.MaybeScanArgs(t, "ring", &cfg.RingSize)
	d.MaybeScanArgs(t, "audit-base", &cfg.AuditSeqBase)
	scanPolicy(t, d, &cfg.Policy)
	c, err := New(cfg)
	if err != nil {
		return "error: " + err.Error()
	}
	*e = scenarioEnv{cfg: cfg, c: c, chk: newChecker(c, cfg)}
	return "ok"
}

// policy [soft=<n>] [hard=<n>] [sample-ms=<n>] [budget=<n>] [window=<n>]
//
//	[critical=(<id>,...)] [override=(<id>:<soft>:<hard>,...)] [victim fields as for new]
//
// Steps InputPolicy with the current policy changed by the given fields.
func handlePolicy(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	p := e.c.Policy()
	scanPolicy(t, d, &p)
	return e.step(t, Input{Kind: InputPolicy, Policy: &p})
}

// register subject=<id> [instance=<n>] [critical] [preference=none|prefer|avoid|never]
//
// Steps InputRegister; instance defaults to 1.
func handleRegister(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputRegister, Instance: 1, Critical: d.HasArg("critical")}
	d.ScanArgs(t, "subject", &in.Subject)
	d.MaybeScanArgs(t, "instance", &in.Instance)
	if arg, ok := d.Arg("preference"); ok {
		require.NoError(t, in.Preference.UnmarshalText([]byte(arg.Vals[0])), d.Pos)
	}
	return e.step(t, in)
}

// sample subject=<id> bytes=<n> [instance=<n>] [claimed=<id>] [count=<n>] [repeat=<n>]
//
// Steps InputSample as if it arrived on subject's own sink; claimed (what the payload
// says) defaults to subject, instance to 1. count is Input.Count (samples the shell
// coalesced into this input). repeat sends the same input n times.
func handleSample(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputSample, Instance: 1}
	d.ScanArgs(t, "subject", &in.Subject)
	d.ScanArgs(t, "bytes", &in.Bytes)
	d.MaybeScanArgs(t, "instance", &in.Instance)
	in.Claimed = in.Subject
	d.MaybeScanArgs(t, "claimed", &in.Claimed)
	d.MaybeScanArgs(t, "count", &in.Count)
	repeat := 1
	d.MaybeScanArgs(t, "repeat", &repeat)
	var out strings.Builder
	for range repeat {
		if o := e.step(t, in); o != "ok" {
			out.WriteString(o)
		}
	}
	if out.Len() == 0 {
		return "ok"
	}
	return out.String()
}

// kernel subject=<id> (bytes=<n> | error=<reason>) [instance=<n>]
//
// Steps InputKernel: the shell read the subject's kernel count (or failed to).
func handleKernel(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputKernel, Instance: 1}
	d.ScanArgs(t, "subject", &in.Subject)
	d.MaybeScanArgs(t, "bytes", &in.Bytes)
	d.MaybeScanArgs(t, "error", &in.Reason)
	d.MaybeScanArgs(t, "instance", &in.Instance)
	return e.step(t, in)
}

// pressure full=<hundredths of a percent>
//
// Steps InputPressure: the shell read PSI's memory "full avg10".
func handlePressure(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputPressure}
	d.ScanArgs(t, "full", &in.Pressure)
	return e.step(t, in)
}

// memstat-invalid subject=<id> reason=<word> [instance=<n>]
//
// Steps InputMemstatInvalid: the shell could not read the subject's page.
func handleMemstatInvalid(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputMemstatInvalid, Instance: 1}
	d.ScanArgs(t, "subject", &in.Subject)
	d.ScanArgs(t, "reason", &in.Reason)
	d.MaybeScanArgs(t, "instance", &in.Instance)
	return e.step(t, in)
}

// tick [n=<count>]
//
// Steps InputTick count times (default 1), printing each tick's output under a
// "tick <n>" header when count > 1.
func handleTick(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	n := 1
	d.MaybeScanArgs(t, "n", &n)
	if n == 1 {
		return e.step(t, Input{Kind: InputTick})
	}
	var out strings.Builder
	for range n {
		o := e.step(t, Input{Kind: InputTick})
		if o != "ok" {
			fmt.Fprintf(&out, "tick %d:\n%s", e.c.TickCount(), o)
		}
	}
	if out.Len() == 0 {
		return "ok"
	}
	return out.String()
}

// audit-ack [seq=<n>]
//
// Steps InputAuditAck: logd made every record up to seq durable. Without seq, acks
// the last record the core produced.
func handleAuditAck(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputAuditAck, Seq: e.chk.lastWriter}
	d.MaybeScanArgs(t, "seq", &in.Seq)
	return e.step(t, in)
}

// audit-spilled [seq=<n>] [reason=<text>]
//
// Steps InputAuditSpilled: the shell made every record up to seq durable in its spill
// file. Without seq, covers the last record the core produced.
func handleAuditSpilled(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputAuditSpilled, Seq: e.chk.lastWriter}
	d.MaybeScanArgs(t, "seq", &in.Seq)
	d.MaybeScanArgs(t, "reason", &in.Reason)
	return e.step(t, in)
}

// terminate-ack decision=<n>
//
// Steps InputTerminateAck: execd accepted the terminate request.
func handleTerminateAck(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputTerminateAck}
	d.ScanArgs(t, "decision", &in.Decision)
	return e.step(t, in)
}

// terminate-refused decision=<n> reason=<text>
//
// Steps InputTerminateRefused.
func handleTerminateRefused(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputTerminateRefused}
	d.ScanArgs(t, "decision", &in.Decision)
	d.ScanArgs(t, "reason", &in.Reason)
	return e.step(t, in)
}

// exited subject=<id> [instance=<n>] [reason=<text>]
//
// Steps InputExited; instance defaults to 1, reason to "signal=TERM".
func handleExited(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputExited, Instance: 1, Reason: "signal=TERM"}
	d.ScanArgs(t, "subject", &in.Subject)
	d.MaybeScanArgs(t, "instance", &in.Instance)
	d.MaybeScanArgs(t, "reason", &in.Reason)
	return e.step(t, in)
}

// events [since=<n>] [limit=<n>]
//
// Reads the ring: Events(since, limit), default since=0 limit=100.
func handleEvents(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	since, limit := uint64(0), 100
	d.MaybeScanArgs(t, "since", &since)
	d.MaybeScanArgs(t, "limit", &limit)
	evs, next, missed := e.c.Events(since, limit)
	var out strings.Builder
	fmt.Fprintf(&out, "next=%d missed=%d last=%d\n", next, missed, e.c.LastSeq())
	for _, ev := range evs {
		out.WriteString(FormatEvent(ev, Canonical) + "\n")
	}
	return out.String()
}

// subjects [limit=<n>]
//
// Prints Subjects(limit) (default 100), one line each, then truncated.
func handleSubjects(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	limit := 100
	d.MaybeScanArgs(t, "limit", &limit)
	list, truncated := e.c.Subjects(limit)
	var out strings.Builder
	for _, s := range list {
		fmt.Fprintf(&out, "%s instance=%d state=%s bytes=%d soft=%d hard=%d critical=%t rejected=%d",
			s.Subject, s.Instance, s.State, s.Bytes, s.SoftBytes, s.HardBytes, s.Critical, s.Rejected)
		if s.Preference != PreferenceNone {
			fmt.Fprintf(&out, " preference=%s", s.Preference)
		}
		if s.HasKernel || s.Signal != SignalMax {
			fmt.Fprintf(&out, " signal=%s kernel=%d published=%t coop=%d", s.Signal, s.Kernel, s.Published, s.Cooperative)
		}
		out.WriteString("\n")
	}
	fmt.Fprintf(&out, "truncated=%t\n", truncated)
	return out.String()
}

// counters
//
// Prints Counters, the tick and the policy version.
func handleCounters(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	k := e.c.Counters()
	return fmt.Sprintf("tick=%d policyVersion=%d kills=%d denied=%d throttled=%d rejected=%d accepted=%d dropped=%d\n",
		e.c.TickCount(), e.c.PolicyVersion(), k.Kills, k.Denied, k.Throttled, k.Rejected, k.Accepted, k.Dropped)
}

// mem-available bytes=<n>
//
// Steps InputMemAvailable: the shell read MemAvailable.
func handleMemAvailable(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputMemAvailable}
	d.ScanArgs(t, "bytes", &in.Bytes)
	return e.step(t, in)
}

// reboot-request [reason=<name>]
//
// Steps InputRebootRequest; reason defaults to userRequest.
func handleRebootRequest(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputRebootRequest, Reason: RebootUserRequest}
	d.MaybeScanArgs(t, "reason", &in.Reason)
	return e.step(t, in)
}

// teardown-done [graceful] [not-stopped=(<id>,...)]
//
// Steps InputTeardownDone: execd's teardown returned with that report.
func handleTeardownDone(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	in := Input{Kind: InputTeardownDone, Graceful: d.HasArg("graceful")}
	if arg, ok := d.Arg("not-stopped"); ok {
		in.NotStopped = append([]string(nil), arg.Vals...)
	}
	return e.step(t, in)
}

// system
//
// Prints the pressure level, the last MemAvailable and the halt token.
func handleSystem(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	l, avail := e.c.Level()
	h := e.c.Halt()
	return fmt.Sprintf("level=%s memAvailable=%d halt claimed=%t reason=%q tick=%d done=%t timedOut=%t\n",
		l, avail, h.Claimed, h.Reason, h.Tick, h.Done, h.TimedOut)
}

// victim-preview
//
// Prints VictimPreview: whom the core would pick now, the score, the runners-up and
// what holds it back; it steps nothing.
func handleVictimPreview(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	ch, ok := e.c.VictimPreview()
	if !ok {
		return "no candidate\n"
	}
	var out strings.Builder
	fmt.Fprintf(&out, "victim=%s instance=%d bytes=%d hard=%d pref=%s score=%d hold=%q\n",
		ch.Subject, ch.Instance, ch.Bytes, ch.Hard, ch.Preference, ch.Score, ch.Hold)
	for _, r := range ch.RunnersUp {
		fmt.Fprintf(&out, "runner-up=%s bytes=%d hard=%d pref=%s score=%d\n", r.Subject, r.Bytes, r.Hard, r.Preference, r.Score)
	}
	fmt.Fprintf(&out, "reason=%q\n", ch.Reason)
	return out.String()
}

// halt-timeout
//
// Steps InputHaltTimeout: the shell's wall clock says the bound passed.
func handleHaltTimeout(t *testing.T, e *scenarioEnv, d *datadriven.TestData) string {
	return e.step(t, Input{Kind: InputHaltTimeout})
}
