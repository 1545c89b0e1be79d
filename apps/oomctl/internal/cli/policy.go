package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/policyfile"
)

// policyView is `policy get --json`: the version and the policy in the same JSON form
// as a policy file, so `jq .policy` of it can be given back to `policy set --file`.
type policyView struct {
	Version uint64        `json:"version"`
	Policy  policy.Policy `json:"policy"`
}

func (r *runner) policyGet(ctx context.Context) error {
	return r.withOomd(ctx, func(ctx context.Context, c *ctlclient.Client) error {
		p, v, err := r.getPolicy(ctx, c)
		if err != nil {
			return err
		}
		if r.g.json {
			return jsonLine(r.env.Stdout, policyView{Version: v, Policy: p})
		}
		return writePolicy(r.env.Stdout, v, p)
	})
}

func (r *runner) getPolicy(ctx context.Context, c *ctlclient.Client) (policy.Policy, uint64, error) {
	p, v, err := c.GetPolicy(ctx)
	if err != nil {
		return p, 0, r.explain(err)
	}
	return p, v, nil
}

// writePolicy prints one aligned line per field, sizes exact and readable.
func writePolicy(w io.Writer, version uint64, p policy.Policy) error {
	size := func(n uint64) string { return fmt.Sprintf("%d (%s)", n, humanBytes(n)) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "version\t%d\n", version)
	fmt.Fprintf(tw, "softBytes\t%s\n", size(p.SoftBytes))
	fmt.Fprintf(tw, "hardBytes\t%s\n", size(p.HardBytes))
	fmt.Fprintf(tw, "sampleMs\t%d\n", p.SampleMs)
	fmt.Fprintf(tw, "killBudget\t%d per killWindowTicks\n", p.KillBudget)
	fmt.Fprintf(tw, "killWindowTicks\t%d\n", p.KillWindowTicks)
	crit := "none"
	if len(p.Critical) > 0 {
		crit = strings.Join(p.Critical, ", ")
	}
	fmt.Fprintf(tw, "critical\t%s (always critical too: %s)\n", crit, strings.Join(sorted(policy.DefaultCritical), ", "))
	if p.OOMTimeoutMs == 0 {
		fmt.Fprintf(tw, "oomTimeoutMs\tdefault (%d)\n", policy.DefaultOOMTimeout)
	} else {
		fmt.Fprintf(tw, "oomTimeoutMs\t%d\n", p.OOMTimeoutMs)
	}
	if l := p.Levels; l.Enabled() {
		fmt.Fprintf(tw, "levels\twarning %s, imminentOom %s, oom %s, hysteresis %s, intervalMs %d\n",
			size(l.WarningBytes), size(l.ImminentOOMBytes), size(l.OOMBytes), size(l.HysteresisBytes), l.IntervalMs)
	} else {
		fmt.Fprintf(tw, "levels\toff\n")
	}
	if len(p.Overrides) == 0 {
		fmt.Fprintf(tw, "overrides\tnone\n")
	}
	fmt.Fprintf(tw, "signal\t%s\n", p.Signal)
	fmt.Fprintf(tw, "underReport\tkernel > published + %s for %d ticks\n", size(p.UnderReport.Margin()), p.UnderReport.TickCount())
	for _, o := range p.Overrides {
		sig := ""
		if o.Signal != nil {
			sig = ", signal " + o.Signal.String()
		}
		fmt.Fprintf(tw, "override\t%s: soft %s, hard %s%s\n", o.Subject, size(o.SoftBytes), size(o.HardBytes), sig)
	}
	fmt.Fprintf(tw, "victims\t%s\n", victimsLine(p))
	for _, l := range []struct {
		name string
		ids  []string
	}{{"victims prefer", p.Victims.Prefer}, {"victims avoid", p.Victims.Avoid}, {"victims never", p.Victims.Never}} {
		if len(l.ids) > 0 {
			fmt.Fprintf(tw, "%s\t%s\n", l.name, strings.Join(l.ids, ", "))
		}
	}
	return tw.Flush()
}

// victimsLine summarises the victims block on one line.
func victimsLine(p policy.Policy) string {
	v := p.Victims
	at, on := v.At()
	if !on {
		return "off"
	}
	s := "at " + at.String()
	if v.Level == policy.VictimLevelDefault {
		s += " (default)"
	}
	s += fmt.Sprintf(", prefer +%d, avoid -%d points, settle %d ticks", v.PreferBy(), v.AvoidBy(), v.Settle())
	if v.DryRun {
		s += ", dry run (reports, kills no victim)"
	}
	if !p.Levels.Enabled() {
		s += "; inactive while levels are off"
	}
	return s
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// setFlags are the options of `policy set`. Each field flag is applied over the policy
// in force only if it was given; --file replaces the policy whole.
type setFlags struct {
	fs                                                *flag.FlagSet
	soft, hard                                        sizeValue
	sampleMs, killBudget, killWindowTicks, oomTimeout uint32Value
	critical                                          listValue
	overrides                                         overrideList
	remove                                            repeated
	file                                              string

	signal                                 signalValue
	underMargin                            sizeValue
	underTicks                             uint32Value
	victimLevel                            victimLevelValue
	preferPoints, avoidPoints, settleTicks uint32Value
	dryRun, killDryRun, whatIf             bool
	victimPrefer, victimAvoid, victimNever listValue
}

func registerSetFlags(fs *flag.FlagSet) *setFlags {
	f := &setFlags{fs: fs}
	fs.Var(&f.soft, "soft-bytes", "global soft limit (`size`)")
	fs.Var(&f.hard, "hard-bytes", "global hard limit (`size`): a subject above it is killed once")
	fs.Var(&f.sampleMs, "sample-ms", "tick length in `ms` ("+bound(policy.MinSampleMs, policy.MaxSampleMs)+")")
	fs.Var(&f.killBudget, "kill-budget", "terminate requests allowed per kill window (`n`, "+bound(1, policy.MaxKillBudget)+")")
	fs.Var(&f.killWindowTicks, "kill-window-ticks", "length of the kill window in `ticks` ("+bound(1, policy.MaxKillWindow)+")")
	fs.Var(&f.oomTimeout, "oom-timeout-ms", "bound on the system OOM teardown in `ms` (0 = default)")
	fs.Var(&f.critical, "critical", "comma-separated `subjects` that are never killed, replacing the list in force (\"\" clears it; the defaults stay critical)")
	fs.Var(&f.overrides, "override", "per-subject limits `subject=soft:hard[:signal]`, added or replaced (repeatable)")
	fs.Var(&f.signal, "signal", "the reading limits apply to: `max` (the larger of kernel and published; default), kernel or cooperative")
	fs.Var(&f.underMargin, "under-report-margin", "kernel count above the published value that counts as under-reporting (`size`, 0 = default 64 MiB)")
	fs.Var(&f.underTicks, "under-report-ticks", "consecutive `ticks` of that gap before memstatUnderReported (0 = default 3)")
	fs.Var(&f.remove, "remove-override", "drop the override of `subject` (repeatable)")
	fs.Var(&f.victimLevel, "victim-level", "pressure `level` at which oomd kills one victim at a time: off, warning, imminentOom or default (= imminentOom)")
	fs.Var(&f.preferPoints, "victim-prefer-points", "score `points` added to a preferred subject (0 = default 500, else 1.."+strconv.Itoa(policy.MaxVictimPoints)+"; 1000 = a whole hard limit)")
	fs.Var(&f.avoidPoints, "victim-avoid-points", "score `points` taken from an avoided subject (0 = default 500, else 1.."+strconv.Itoa(policy.MaxVictimPoints)+")")
	fs.Var(&f.settleTicks, "victim-settle-ticks", "`ticks` to wait after a victim's kill before the next (0 = default 10)")
	fs.BoolVar(&f.whatIf, "what-if", false, "change nothing: show what the resulting policy would do now against oomd's live state (the events of one tick under it)")
	fs.BoolVar(&f.killDryRun, "dry-run", false, "watch and report without terminating anything: hard-limit crossings become wouldKill events (audited), victims are only named; --dry-run=false turns it off (per subject: \"dryRun\" in an override, with --file)")
	fs.BoolVar(&f.dryRun, "victim-dry-run", false, "report whom oomd would kill under pressure (victimWouldKill events) but kill no victim; --victim-dry-run=false turns it off")
	fs.Var(&f.victimPrefer, "victim-prefer", "comma-separated `subjects` preferred as victims, replacing the list in force (\"\" clears it)")
	fs.Var(&f.victimAvoid, "victim-avoid", "comma-separated `subjects` avoided as victims, replacing the list in force (\"\" clears it)")
	fs.Var(&f.victimNever, "victim-never", "comma-separated `subjects` never killed as victims (their own hard limit still applies), replacing the list in force (\"\" clears it)")
	fs.StringVar(&f.file, "file", "", "replace the whole policy with this JSON `file` (\"-\" reads stdin); fields it omits take oomd's defaults")
	return f
}

func bound(lo, hi int) string { return fmt.Sprintf("%d..%d", lo, hi) }

// given reports which flags were set on the command line, by name.
func (f *setFlags) given() map[string]bool {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	return set
}

// fieldFlags are the flags that edit the policy in force (everything but --file and
// the global flags).
var fieldFlags = []string{"soft-bytes", "hard-bytes", "sample-ms", "kill-budget", "kill-window-ticks",
	"oom-timeout-ms", "critical", "override", "remove-override", "signal", "under-report-margin", "under-report-ticks",
	"victim-level", "victim-prefer-points", "victim-avoid-points", "victim-settle-ticks", "victim-dry-run",
	"victim-prefer", "victim-avoid", "victim-never", "dry-run"}

// edits reports whether any field flag was given.
func (f *setFlags) edits() bool {
	set := f.given()
	return slices.ContainsFunc(fieldFlags, func(n string) bool { return set[n] })
}

// apply returns cur with the given field flags applied. It does not validate: oomd
// does, and its error names the field.
func (f *setFlags) apply(cur policy.Policy) (policy.Policy, error) {
	p := cur
	p.Critical = slices.Clone(cur.Critical)
	p.Overrides = slices.Clone(cur.Overrides)
	p.Victims.Prefer = slices.Clone(cur.Victims.Prefer)
	p.Victims.Avoid = slices.Clone(cur.Victims.Avoid)
	p.Victims.Never = slices.Clone(cur.Victims.Never)
	set := f.given()
	if set["soft-bytes"] {
		p.SoftBytes = f.soft.n
	}
	if set["hard-bytes"] {
		p.HardBytes = f.hard.n
	}
	if set["sample-ms"] {
		p.SampleMs = f.sampleMs.n
	}
	if set["kill-budget"] {
		p.KillBudget = f.killBudget.n
	}
	if set["kill-window-ticks"] {
		p.KillWindowTicks = f.killWindowTicks.n
	}
	if set["oom-timeout-ms"] {
		p.OOMTimeoutMs = f.oomTimeout.n
	}
	if set["critical"] {
		p.Critical = slices.Clone(f.critical.items)
	}
	if set["signal"] {
		p.Signal = f.signal.s
	}
	if set["under-report-margin"] {
		p.UnderReport.MarginBytes = f.underMargin.n
	}
	if set["under-report-ticks"] {
		p.UnderReport.Ticks = f.underTicks.n
	}
	if set["victim-level"] {
		p.Victims.Level = f.victimLevel.l
	}
	if set["victim-prefer-points"] {
		p.Victims.PreferPoints = f.preferPoints.n
	}
	if set["victim-avoid-points"] {
		p.Victims.AvoidPoints = f.avoidPoints.n
	}
	if set["victim-settle-ticks"] {
		p.Victims.SettleTicks = f.settleTicks.n
	}
	if set["dry-run"] {
		p.DryRun = f.killDryRun
	}
	if set["victim-dry-run"] {
		p.Victims.DryRun = f.dryRun
	}
	if set["victim-prefer"] {
		p.Victims.Prefer = slices.Clone(f.victimPrefer.items)
	}
	if set["victim-avoid"] {
		p.Victims.Avoid = slices.Clone(f.victimAvoid.items)
	}
	if set["victim-never"] {
		p.Victims.Never = slices.Clone(f.victimNever.items)
	}
	for _, s := range f.remove {
		i := slices.IndexFunc(p.Overrides, func(o policy.SubjectLimit) bool { return o.Subject == s })
		if i < 0 {
			return p, invalidf("--remove-override %s: the policy in force has no override for %q", s, s)
		}
		p.Overrides = slices.Delete(p.Overrides, i, i+1)
	}
	for _, o := range f.overrides {
		if i := slices.IndexFunc(p.Overrides, func(x policy.SubjectLimit) bool { return x.Subject == o.Subject }); i >= 0 {
			p.Overrides[i] = o
		} else {
			p.Overrides = append(p.Overrides, o)
		}
	}
	return p, nil
}

// policyResult is `policy set --json`.
type policyResult struct {
	Version uint64 `json:"version"`
}

func (r *runner) policySet(ctx context.Context, f *setFlags) error {
	edits := f.edits()
	switch {
	case f.file != "" && edits:
		return invalidf("policy set: give either --file or field flags, not both")
	case f.file == "" && !edits:
		return invalidf("policy set: nothing to set; give field flags (e.g. --hard-bytes 512M) or --file (see %s help policy set)", r.env.progName())
	}
	var fromFile policy.Policy
	if f.file != "" {
		var err error
		if fromFile, err = readPolicyFile(f.file, r.env.Stdin); err != nil {
			return err
		}
	}
	return r.withOomd(ctx, func(ctx context.Context, c *ctlclient.Client) error { return r.applyPolicy(ctx, c, f, fromFile) })
}

// applyPolicy is policy set once connected: fromFile as is, or the flags' edits to the
// policy in force.
func (r *runner) applyPolicy(ctx context.Context, c *ctlclient.Client, f *setFlags, fromFile policy.Policy) error {
	edits := f.edits()
	p := fromFile
	var expect uint64 // a file replaces the policy whole: no version to check
	if edits {
		// Read-modify-write as a compare-and-set: a change someone makes between this
		// read and our set makes oomd refuse ours instead of silently losing theirs.
		cur, v, err := r.getPolicy(ctx, c)
		if err != nil {
			return err
		}
		if p, err = f.apply(cur); err != nil {
			return err
		}
		expect = v
	}
	if f.whatIf {
		if err := p.Validate(); err != nil {
			return invalidf("the policy would be refused: %v", err)
		}
		evs, v, err := c.WhatIf(ctx, p)
		if err != nil {
			if why, ok := refusedPolicy(err); ok {
				return invalidf("oomd would refuse the policy: %s", why)
			}
			return r.explain(err)
		}
		pr := &printer{w: r.env.Stdout, json: r.g.json}
		if !r.g.json {
			fmt.Fprintf(r.env.Stdout, "what-if against the live state (version %d stays in force; nothing changed):\n", v)
		}
		for _, e := range evs {
			if err := pr.event(e); err != nil {
				return err
			}
		}
		return nil
	}
	v, err := r.setPolicy(ctx, c, p, expect)
	if err != nil {
		return err
	}
	if r.g.json {
		return jsonLine(r.env.Stdout, policyResult{Version: v})
	}
	fmt.Fprintf(r.env.Stdout, "policy version %d in force\n", v)
	return nil
}

func (r *runner) setPolicy(ctx context.Context, c *ctlclient.Client, p policy.Policy, expectVersion uint64) (uint64, error) {
	v, err := c.SetPolicyIf(ctx, p, expectVersion)
	if err != nil {
		if strings.Contains(err.Error(), "policy changed") {
			return 0, fmt.Errorf("someone changed the policy while we edited it, so ours was not applied; run the command again: %w", err)
		}
		if why, ok := refusedPolicy(err); ok {
			return 0, invalidf("oomd refused the policy and keeps the one in force: %s", why)
		}
		return 0, r.explain(err)
	}
	return v, nil
}

// readPolicyFile parses a policy file strictly, as oomd parses its own --policy file,
// so a mistake is reported with its line and column before anything is sent.
func readPolicyFile(path string, stdin io.Reader) (policy.Policy, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return policy.Policy{}, invalidf("policy file: %w", err)
	}
	p, err := policyfile.Parse(b)
	if err != nil {
		return p, invalidf("policy file %s: %w", path, err)
	}
	return p, nil
}

// sizeValue is a flag holding a byte count with an optional unit suffix.
type sizeValue struct{ n uint64 }

func (v *sizeValue) String() string {
	if v == nil {
		return ""
	}
	return strconv.FormatUint(v.n, 10)
}

func (v *sizeValue) Set(s string) (err error) {
	v.n, err = parseSize(s)
	return err
}

// uint32Value is a flag holding a uint32 (policy fields are UInt32 on the wire; a
// larger number must fail here, not wrap).
type uint32Value struct{ n uint32 }

func (v *uint32Value) String() string {
	if v == nil {
		return ""
	}
	return strconv.FormatUint(uint64(v.n), 10)
}

func (v *uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return fmt.Errorf("%q is out of range (at most %d)", s, math.MaxUint32)
		}
		return fmt.Errorf("%q is not a whole number", s)
	}
	v.n = uint32(n)
	return nil
}

// signalValue is --signal: max, kernel or cooperative.
type signalValue struct{ s policy.Signal }

func (v *signalValue) String() string {
	if v == nil {
		return ""
	}
	return v.s.String()
}

func (v *signalValue) Set(s string) error { return v.s.UnmarshalText([]byte(s)) }

// victimLevelValue is --victim-level: off, warning, imminentOom, or default (the
// policy's zero value, which means imminentOom).
type victimLevelValue struct{ l policy.VictimLevel }

func (v *victimLevelValue) String() string {
	if v == nil {
		return ""
	}
	return v.l.String()
}

func (v *victimLevelValue) Set(s string) error {
	if s == "default" {
		v.l = policy.VictimLevelDefault
		return nil
	}
	if s == "" {
		return errors.New(`want off, warning, imminentOom or default`)
	}
	return v.l.UnmarshalText([]byte(s))
}

// listValue is a comma-separated list flag; "" is the empty list.
type listValue struct{ items []string }

func (v *listValue) String() string {
	if v == nil {
		return ""
	}
	return strings.Join(v.items, ",")
}

func (v *listValue) Set(s string) error {
	v.items = nil
	for _, it := range strings.Split(s, ",") {
		if it = strings.TrimSpace(it); it != "" {
			v.items = append(v.items, it)
		}
	}
	return nil
}

// repeated collects every value of a repeatable flag.
type repeated []string

func (v *repeated) String() string {
	if v == nil {
		return ""
	}
	return strings.Join(*v, ",")
}

func (v *repeated) Set(s string) error {
	if s == "" {
		return errors.New("empty subject")
	}
	*v = append(*v, s)
	return nil
}

// overrideList collects --override subject=soft:hard flags.
type overrideList []policy.SubjectLimit

func (v *overrideList) String() string {
	if v == nil {
		return ""
	}
	var parts []string
	for _, o := range *v {
		parts = append(parts, fmt.Sprintf("%s=%d:%d", o.Subject, o.SoftBytes, o.HardBytes))
	}
	return strings.Join(parts, ",")
}

func (v *overrideList) Set(s string) error {
	o, err := parseOverride(s)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(*v, func(x policy.SubjectLimit) bool { return x.Subject == o.Subject }) {
		return fmt.Errorf("%s is given twice", o.Subject)
	}
	*v = append(*v, o)
	return nil
}

// parseOverride reads "subject=soft:hard", the sizes as parseSize reads them.
func parseOverride(s string) (policy.SubjectLimit, error) {
	subject, limits, ok := strings.Cut(s, "=")
	if !ok || subject == "" {
		return policy.SubjectLimit{}, fmt.Errorf("%q: want subject=soft:hard[:signal], e.g. db=1G:2G or db=1G:2G:kernel", s)
	}
	softS, hardS, ok := strings.Cut(limits, ":")
	if !ok {
		return policy.SubjectLimit{}, fmt.Errorf("%q: want subject=soft:hard, e.g. db=1G:2G", s)
	}
	soft, err := parseSize(softS)
	if err != nil {
		return policy.SubjectLimit{}, fmt.Errorf("%s: soft: %w", subject, err)
	}
	var sig *policy.Signal
	if h, sigS, ok := strings.Cut(hardS, ":"); ok {
		hardS = h
		var v policy.Signal
		if err := v.UnmarshalText([]byte(sigS)); err != nil {
			return policy.SubjectLimit{}, fmt.Errorf("%s: %w", subject, err)
		}
		sig = &v
	}
	hard, err := parseSize(hardS)
	if err != nil {
		return policy.SubjectLimit{}, fmt.Errorf("%s: hard: %w", subject, err)
	}
	return policy.SubjectLimit{Subject: subject, SoftBytes: soft, HardBytes: hard, Signal: sig}, nil
}
