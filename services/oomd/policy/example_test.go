package policy_test

import (
	"fmt"

	"oomd.dev/oomd/services/oomd/policy"
)

// Example drives a core the way the daemon shell does: a hog crosses its hard limit,
// the kill decision is audited, the audit is acknowledged, the terminate request goes
// out, and the kill completes when execd acknowledges it and the exit is observed.
func Example() {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes = 1000, 2000
	core, err := policy.New(policy.Config{Policy: p})
	if err != nil {
		panic(err)
	}

	// handle plays the shell: audit first, then terminates, then events.
	handle := func() {
		if !core.HasReady() {
			return
		}
		rd := core.Ready()
		for _, a := range rd.Audit {
			fmt.Println("journal:", policy.FormatAudit(a))
			// logd synced it: acknowledge. The terminate this releases shows in the
			// next Ready, not this one.
			_ = core.Step(policy.Input{Kind: policy.InputAuditAck, Seq: a.WriterSeq})
		}
		for _, t := range rd.Terminate {
			fmt.Println("execd:", policy.FormatTerminate(t))
		}
		for _, ev := range rd.Events {
			fmt.Println("publish:", policy.FormatEvent(ev, policy.Canonical))
		}
		core.Advance()
	}

	_ = core.Step(policy.Input{Kind: policy.InputRegister, Subject: "hog", Instance: 1})
	handle()
	_ = core.Step(policy.Input{Kind: policy.InputSample, Subject: "hog", Instance: 1, Claimed: "hog", Bytes: 4096})
	core.Tick()
	handle()
	handle()
	_ = core.Step(policy.Input{Kind: policy.InputTerminateAck, Decision: 1})
	_ = core.Step(policy.Input{Kind: policy.InputExited, Subject: "hog", Instance: 1, Reason: "signal=TERM"})
	handle()
	// Output:
	// publish: event seq=1 tick=0 kind=subjectRegistered subject=hog
	// journal: audit writerSeq=1 tick=1 kind=killDecided subject=hog instance=1 bytes=4096 limit=2000 decision=1 reason="hard limit exceeded"
	// publish: event seq=2 tick=1 kind=softExceeded subject=hog bytes=4096 limit=1000
	// publish: event seq=3 tick=1 kind=killDecided subject=hog bytes=4096 limit=2000 decision=1
	// execd: terminate decision=1 subject=hog instance=1 bytes=4096 limit=2000 reason="hard limit exceeded"
	// publish: event seq=4 tick=1 kind=killRequested subject=hog bytes=4096 limit=2000 decision=1
	// journal: audit writerSeq=2 tick=1 kind=killed subject=hog instance=1 bytes=4096 limit=2000 decision=1 reason="signal=TERM"
	// publish: event seq=5 tick=1 kind=subjectExited subject=hog reason="signal=TERM"
	// publish: event seq=6 tick=1 kind=killed subject=hog bytes=4096 limit=2000 decision=1 reason="signal=TERM"
}
