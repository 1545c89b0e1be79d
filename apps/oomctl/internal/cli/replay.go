package cli

import (
	"context"
	"flag"
	"fmt"
	"os"

	"oomd.dev/oomd/services/oomd/policyfile"
	"oomd.dev/oomd/services/oomd/tracelog"
)

// replayFlags are the options of `replay`.
type replayFlags struct {
	policy string
	trace  string // the positional TRACE
}

func registerReplayFlags(fs *flag.FlagSet) *replayFlags {
	f := &replayFlags{}
	fs.StringVar(&f.policy, "policy", "", "replay against this policy `file` instead, and print only the decisions that differ")
	return f
}

// replay prints the events oomd's core emitted during a recorded run (its live trace,
// oomd --trace), recomputed from the recorded inputs: the same as oomd's own, byte for
// byte, wall times aside. With --policy it runs the inputs under that policy instead
// and prints the decisions only one of the two runs made.
func (r *runner) replay(_ context.Context, f *replayFlags) error {
	files, err := tracelog.Chain(f.trace)
	if err != nil {
		return invalidf("replay: %v", err)
	}
	actual, err := tracelog.Replay(files)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if f.policy == "" {
		p := &printer{w: r.env.Stdout, json: r.g.json}
		for _, e := range actual {
			if err := p.event(e); err != nil {
				return err
			}
		}
		return nil
	}
	b, err := os.ReadFile(f.policy)
	if err != nil {
		return invalidf("replay --policy: %v", err)
	}
	pol, err := policyfile.Parse(b)
	if err != nil {
		return invalidf("replay --policy %s: %v", f.policy, err)
	}
	other, err := tracelog.WhatIf(files, pol)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	onlyActual, onlyOther := tracelog.Diff(actual, other)
	if r.g.json {
		for _, d := range onlyActual {
			if err := jsonLine(r.env.Stdout, diffView{Only: "recorded", Tick: d.Tick, Kind: d.Kind.String(), Subject: d.Subject}); err != nil {
				return err
			}
		}
		for _, d := range onlyOther {
			if err := jsonLine(r.env.Stdout, diffView{Only: "policy", Tick: d.Tick, Kind: d.Kind.String(), Subject: d.Subject}); err != nil {
				return err
			}
		}
		return nil
	}
	first, last := files[0].Header.File, files[len(files)-1].Header.File
	fmt.Fprintf(r.env.Stdout, "what-if: %s against the recorded run (trace files %d..%d)\n", f.policy, first, last)
	fmt.Fprintln(r.env.Stdout, "model: audit acknowledged at once, execd accepts every terminate, exits as they happened")
	if len(onlyActual)+len(onlyOther) == 0 {
		fmt.Fprintln(r.env.Stdout, "no difference: the same decisions at the same ticks")
		return nil
	}
	for _, d := range onlyActual {
		fmt.Fprintf(r.env.Stdout, "- tick %d %s subject=%s (only the recorded run)\n", d.Tick, d.Kind, d.Subject)
	}
	for _, d := range onlyOther {
		fmt.Fprintf(r.env.Stdout, "+ tick %d %s subject=%s (only with %s)\n", d.Tick, d.Kind, d.Subject, f.policy)
	}
	return nil
}

// diffView is one line of `replay --policy --json`.
type diffView struct {
	Only    string `json:"only"` // "recorded" or "policy"
	Tick    uint64 `json:"tick"`
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
}
