// Package policy is oomd's policy core: a pure, deterministic state machine that turns
// memstat samples and ticks into kill decisions, in the style of etcd-io/raft's
// RawNode.
//
// The core performs no I/O, reads no clock, has no randomness and starts no
// goroutine; it never iterates a map where order could show. Time is Tick, every
// other input is Step, and everything the caller must do comes out of Ready as plain
// data. The same inputs therefore give byte-identical outputs, which EncodeTrace,
// DecodeTrace and Replay make checkable: a recorded trace replays to the same text.
//
// # The loop
//
// One goroutine owns a Core: the daemon's owner loop (services/oomd/daemon/loop.go), in
// the style of raft's node.run. It sleeps on one epoll set holding its clocks and a
// doorbell (internal/loopwait); other goroutines queue their inputs on channels and ring
// the bell. Everything the core wants done leaves as a field of Ready, carried out
// (handleReady below) after each step that produced it:
//
//	core, err := policy.New(policy.Config{Policy: policy.DefaultPolicy()})
//	if err != nil {
//		return err
//	}
//	for {
//		fired, err := wait.Wait() // the clocks and the bell
//		if err != nil {
//			return err
//		}
//		if fired.Rang() { // take everything queued, answers before calls
//			for q := range queued(answers, calls) {
//				switch q := q.(type) {
//				case policy.Input: // audit acks, terminate answers, the teardown's report
//					_ = core.Step(q)
//				case call: // registrations, exits, policy changes, queries
//					q.run(core)
//				}
//				handleReady(core)
//			}
//		}
//		if fired.Has(tick) { // one tick = Policy.SampleMs
//			for _, s := range subjects() { // the kernel's count, in subject order
//				in := policy.Input{Kind: policy.InputKernel, Subject: s.subject,
//					Instance: s.instance, Bytes: kernelBytes(s)}
//				if !core.KernelUnchanged(&in) { // one the core would ignore is left out
//					_ = core.Step(in)
//				}
//			}
//			for _, s := range drainSamples() { // coalesced per subject, in subject order
//				_ = core.Step(policy.Input{Kind: policy.InputSample, Subject: s.subject,
//					Instance: s.instance, Claimed: s.claimed, Bytes: s.bytes})
//			}
//			_ = core.Step(policy.Input{Kind: policy.InputMemAvailable, Bytes: memAvailable()})
//			_ = core.Step(policy.Input{Kind: policy.InputTick})
//			handleReady(core)
//		}
//		if fired.Has(halt) { // armed from Ready.HaltTimer
//			_ = core.Step(policy.Input{Kind: policy.InputHaltTimeout})
//			handleReady(core)
//		}
//	}
//
//	func handleReady(core *policy.Core) {
//		if !core.HasReady() {
//			return
//		}
//		rd := core.Ready()
//		journal.Append(rd.Audit)   // 1. audit first; when logd has synced up to
//		                           //    seq, an answer InputAuditAck{Seq: seq} comes
//		for _, t := range rd.Terminate {
//			go terminate(t)         // 2. its audit record is already durable; the
//		}                           //    answer is InputTerminateAck/Refused
//		for _, h := range rd.HaltTimer {
//			wait.After(halt, ms(h.Ms)) // 3. the bound on the wall clock
//		}
//		for _, h := range rd.Halt {
//			go teardown(h)          //    and the teardown (answer: InputTeardownDone)
//		}
//		persistAndReboot(rd.Reboot) // 4. the outcome (stop the halt clock)
//		publish(rd.Events)         // 5. subscribers, markers, logs
//		core.Advance()
//	}
//
// Long operations (logd's sync, execd's terminate and teardown) run on goroutines of
// their own and come back as inputs on the same loop; the core never waits for
// anything. Advance drops exactly what the last Ready returned, so output produced by
// a Step made while a Ready was being handled is kept for the next one.
//
// # Guarantees
//
//   - A sample counts for the subject execd bound to its sink (Input.Subject), never
//     for the subject its payload claims; a mismatch is dropped and reported
//     (EventMemstatRejected). Samples are coalesced per subject per tick.
//   - A non-critical subject instance gets at most one kill decision in its lifetime.
//     Its audit record comes out first; its TerminateRequest only after
//     InputAuditAck covers that record, and only within the kill budget.
//   - A critical subject (DefaultCritical, the policy's list, or the registration's
//     flag) is never the target of a TerminateRequest; crossing hard is denied, once
//     per crossing.
//   - EventKilled is emitted only after both the terminate acknowledgement and the
//     exit of that instance.
//   - System OOM (system.go): MemAvailable (InputMemAvailable) moves the pressure
//     level with hysteresis; reaching oom, or InputRebootRequest, claims the halt token
//     once per core lifetime, and every later request is refused and recorded. The
//     HaltRequest leaves only after the haltClaimed record is durable; the bound
//     (Policy.OOMTimeoutMs, in ticks, from the claim) ends the sequence with exactly
//     one RebootOutcome, whichever of execd's acknowledgement and the bound comes first.
//   - Victims (victims.go): at or above Policy.Victims' level (default imminentOom) the
//     core picks one non-critical, non-never subject at a time by an integer score
//     (enforced bytes per mille of its own hard limit, adjusted by prefer/avoid points,
//     ties by id) and decides its kill through the same audit, budget and terminate
//     path; the next waits for the previous to end plus SettleTicks. A dry run emits
//     EventVictimWouldKill instead; VictimPreview shows the choice without deciding.
//   - Memory is bounded: MaxSubjects subjects, a fixed event ring, one decision per
//     subject instance, at most MaxKillBudget entries of rate-limit history.
//
// docs/reliability/oom-policy.md describes the state machine and the threat model.
package policy
