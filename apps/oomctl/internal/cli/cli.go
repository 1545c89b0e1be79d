package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"oomd.dev/oomd/internal/version"
	"oomd.dev/oomd/services/oomd/ctlclient"
)

// Exit codes, as documented in the usage text.
const (
	ExitOK      = 0
	ExitRuntime = 1 // oomd unreachable, a call failed or timed out
	ExitUsage   = 2 // bad command line or invalid input, including a policy oomd refused
)

// DefaultSocket is used when neither --socket nor OOMD_SOCKET is given. A variable so a
// package can link in its own (make deb: -X ...cli.DefaultSocket=/run/oomwatch/oomd.sock).
var DefaultSocket = "/run/oomd/oomd.sock"

// Env is what a run of oomctl talks to; tests pass buffers and a fixed environment.
type Env struct {
	Stdin          io.Reader // policy set --file -
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Log            *zap.Logger // RPC plumbing logs; nil discards them
	// Name is the name the program was run as (the base of os.Args[0]): the .deb
	// installs it as oomwatchctl. The shell completion registers for it. "" (and a name
	// a shell could not take as a word) is "oomctl".
	Name string
}

// progName is env.Name if it is a plain command name, else "oomctl".
func (env Env) progName() string {
	if env.Name == "" || env.Name[0] == '-' || strings.Trim(env.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-") != "" {
		return "oomctl"
	}
	return env.Name
}

// inputError is an error in what the user gave us (exit 2): a flag value, a policy file,
// a policy oomd refused.
type inputError struct{ err error }

func (e inputError) Error() string { return e.err.Error() }
func (e inputError) Unwrap() error { return e.err }

func invalidf(format string, args ...any) error {
	return inputError{fmt.Errorf(format, args...)}
}

// globals are the flags every command accepts.
type globals struct {
	socket  string
	json    bool
	timeout time.Duration
}

// register adds the global flags to fs, keeping values parsed earlier (before the
// command name) as the defaults, so they can be given on either side of the command.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.socket, "socket", g.socket, "`path` of oomd's control socket (default $OOMD_SOCKET, else "+DefaultSocket+")")
	fs.BoolVar(&g.json, "json", g.json, "print one JSON object per line, for scripts")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline for connecting and for each call except --follow's stream (0: none)")
}

// command is one entry of the dispatch table.
type command struct {
	name    string // "policy set" for nested commands
	args    string
	summary string
	flags   func(fs *flag.FlagSet) any // registers the command's own flags, returns its options
	// positional, if set, takes the command's one required argument (anywhere among
	// its flags); without it no argument is accepted.
	positional func(opts any, arg string)
	run        func(ctx context.Context, r *runner, opts any) error
}

var commands = []command{
	{name: "status", summary: "oomd's tick and counters, and every subject's usage, limits and state",
		run: func(ctx context.Context, r *runner, _ any) error { return r.status(ctx) }},
	{name: "policy get", summary: "the policy in force and its version",
		run: func(ctx context.Context, r *runner, _ any) error { return r.policyGet(ctx) }},
	{name: "policy set", args: "[flags] | --file policy.json",
		summary: "change fields of the policy in force, or replace it with a JSON file",
		flags:   func(fs *flag.FlagSet) any { return registerSetFlags(fs) },
		run:     func(ctx context.Context, r *runner, o any) error { return r.policySet(ctx, o.(*setFlags)) }},
	{name: "events", args: "[--since N] [--limit N] [--follow]",
		summary: "oomd's event history; --follow then prints new events as they happen",
		flags:   func(fs *flag.FlagSet) any { return registerPageFlags(fs, true) },
		run:     func(ctx context.Context, r *runner, o any) error { return r.events(ctx, o.(*pageFlags)) }},
	{name: "audit", args: "[--since N] [--limit N]",
		summary: "the durable audit journal (logd's), read through oomd",
		flags:   func(fs *flag.FlagSet) any { return registerPageFlags(fs, false) },
		run:     func(ctx context.Context, r *runner, o any) error { return r.audit(ctx, o.(*pageFlags)) }},
	{name: "last-reboot", summary: "why the system last rebooted, from the record oomd read at start",
		run: func(ctx context.Context, r *runner, _ any) error { return r.lastReboot(ctx) }},
	{name: "replay", args: "TRACE [--policy FILE]",
		summary:    "recompute a recorded run's events from oomd's live trace (TRACE: its directory or a file; needs no oomd), or with --policy what another policy would have decided",
		flags:      func(fs *flag.FlagSet) any { return registerReplayFlags(fs) },
		positional: func(o any, arg string) { o.(*replayFlags).trace = arg },
		run:        func(ctx context.Context, r *runner, o any) error { return r.replay(ctx, o.(*replayFlags)) }},
}

// usage prints the help text for the program named prog (Env.progName).
func usage(w io.Writer, prog string) {
	fmt.Fprint(w, strings.ReplaceAll(`oomctl operates oomd, the memory watchdog, through its control socket.

Usage:
  oomctl [global flags] <command> [flags]

Commands:
`, "oomctl", prog))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintf(tw, "  help [command]\tthis text, or one command's flags\n")
	fmt.Fprintf(tw, "  completion bash\ta bash completion script (source it, or install it as\n")
	fmt.Fprintf(tw, "  \t/usr/share/bash-completion/completions/%s)\n", prog)
	tw.Flush()
	fmt.Fprint(w, strings.ReplaceAll(`
Global flags (accepted before or after the command):
  --socket PATH   oomd's control socket (default $OOMD_SOCKET, else `+DefaultSocket+`)
  --json          one JSON object per line, with stable field names, for scripts
  --timeout D     deadline for connecting and for each call, except the stream of
                  events --follow (default 10s; 0 means none)

Sizes (--soft-bytes, --hard-bytes, --override, --under-report-margin) are a byte count,
whole or with a fraction, with an optional suffix: K/KiB, M/MiB, G/GiB, T/TiB are
1024-based (8M = 8MiB = 8388608, 0.5G = 512MiB), KB, MB, GB, TB 1000-based (512MB =
512000000); or a percentage of this machine's memory (25% of MemTotal).

Exit status:
  0  success (also when events --follow is ended by Ctrl-C or SIGTERM)
  1  runtime error: oomd is not running or not accessible, a call failed or timed out
  2  usage error or invalid input: unknown command or flag, a bad value, an unreadable
     or invalid policy file, or a policy oomd refused (its message names the field)

Examples:
  oomctl status
  oomctl policy set --hard-bytes 512M --override db=1G:2G --critical sshd
  oomctl policy get --json | jq .policy > p.json && oomctl policy set --file p.json
  oomctl events --follow --json
`, "oomctl", prog))
}

// Main runs oomctl with args (without the program name) and returns the exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Log == nil {
		env.Log = zap.NewNop()
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	err := run(ctx, args, env)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, new(inputError)):
		fmt.Fprintf(env.Stderr, "%s: %v\n", env.progName(), err)
		return ExitUsage
	case errors.Is(err, errUsageShown):
		return ExitUsage
	default:
		fmt.Fprintf(env.Stderr, "%s: %v\n", env.progName(), err)
		return ExitRuntime
	}
}

// errUsageShown: the flag package already printed the error and the usage.
var errUsageShown = errors.New("usage error")

func run(ctx context.Context, args []string, env Env) error {
	g := &globals{socket: env.Getenv("OOMD_SOCKET"), timeout: 10 * time.Second}
	if g.socket == "" {
		g.socket = DefaultSocket
	}
	prog := env.progName()
	top := flag.NewFlagSet(prog, flag.ContinueOnError)
	top.SetOutput(io.Discard) // errors are printed by parseErr, in the CLI's --name form
	top.Usage = func() {}     // printed below, to stdout when asked for
	g.register(top)
	showVersion := top.Bool("version", false, "print the version and exit")
	if err := top.Parse(args); err != nil {
		return parseErr(err, env, func(w io.Writer) { usage(w, prog) }, top)
	}
	if *showVersion {
		fmt.Fprintf(env.Stdout, "%s %s\n", prog, version.String())
		return nil
	}
	rest := top.Args()
	if len(rest) == 0 {
		usage(env.Stderr, prog)
		return errUsageShown
	}
	if rest[0] == "help" {
		return help(rest[1:], env)
	}
	if rest[0] == "completion" {
		return completion(rest[1:], env)
	}
	cmd, rest, err := lookup(rest, prog)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet(prog+" "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var opts any
	if cmd.flags != nil {
		opts = cmd.flags(fs)
	}
	g.register(fs)
	fs.Usage = func() {}
	if err := fs.Parse(rest); err != nil {
		return parseErr(err, env, func(w io.Writer) { commandUsage(w, cmd, fs, prog) }, fs)
	}
	if cmd.positional != nil {
		if fs.NArg() == 0 {
			return invalidf("%s: missing %s (see %s help %s)", cmd.name, strings.Fields(cmd.args)[0], prog, cmd.name)
		}
		cmd.positional(opts, fs.Arg(0))
		// Flags may follow the argument: parse what is after it.
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return parseErr(err, env, func(w io.Writer) { commandUsage(w, cmd, fs, prog) }, fs)
		}
	}
	if fs.NArg() > 0 {
		return invalidf("%s: unexpected argument %q (see %s help %s)", cmd.name, fs.Arg(0), prog, cmd.name)
	}
	if g.timeout < 0 {
		return invalidf("--timeout %v: must not be negative", g.timeout)
	}
	r := &runner{g: g, env: env}
	return cmd.run(ctx, r, opts)
}

// parseErr prints a flag error (with the flag named --name, as the CLI is documented) and
// the usage, or the usage alone to stdout for -h/--help, and returns what Main maps to
// the exit code.
func parseErr(err error, env Env, show func(io.Writer), fs *flag.FlagSet) error {
	if errors.Is(err, flag.ErrHelp) {
		show(env.Stdout)
		return err
	}
	fmt.Fprintf(env.Stderr, "%s: %s\n", env.progName(), doubleDash(err.Error()))
	if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
		var known []string
		fs.VisitAll(func(f *flag.Flag) { known = append(known, f.Name) })
		if best := closest(strings.TrimLeft(name, "-"), known); best != "" {
			fmt.Fprintf(env.Stderr, "%s: --%s: did you mean --%s?\n", env.progName(), name, best)
		}
	}
	show(env.Stderr)
	return errUsageShown
}

// doubleDash writes the flag named in one of the flag package's errors as --name (the
// package writes -name); other messages are returned as they are.
func doubleDash(msg string) string {
	for _, p := range []string{"flag provided but not defined: -", "flag needs an argument: -"} {
		if rest, ok := strings.CutPrefix(msg, p); ok {
			return p + "-" + rest
		}
	}
	// invalid value "V" for flag -name: ... (V is quoted, and may hold anything)
	for _, shape := range [][2]string{{"invalid value ", " for flag -"}, {"invalid boolean value ", " for -"}} {
		rest, ok := strings.CutPrefix(msg, shape[0])
		if !ok {
			continue
		}
		if v, err := strconv.QuotedPrefix(rest); err == nil && strings.HasPrefix(rest[len(v):], shape[1]) {
			return shape[0] + v + shape[1] + "-" + rest[len(v)+len(shape[1]):]
		}
	}
	return msg
}

// lookup finds the command named by the first one or two words of args; prog names the
// program in its errors.
func lookup(args []string, prog string) (command, []string, error) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			return c, args[len(words):], nil
		}
	}
	if args[0] == "policy" {
		if len(args) == 1 {
			return command{}, nil, invalidf("policy: say get or set (see %s help)", prog)
		}
		return command{}, nil, invalidf("policy %s: unknown command: say get or set%s (see %s help)", args[1], didYouMean(args[1], []string{"get", "set"}), prog)
	}
	var names []string
	for _, c := range commands {
		names = append(names, strings.Fields(c.name)[0])
	}
	return command{}, nil, invalidf("unknown command %q%s (see %s help)", args[0], didYouMean(args[0], append(names, "help", "completion")), prog)
}

func help(args []string, env Env) error {
	prog := env.progName()
	if len(args) == 0 {
		usage(env.Stdout, prog)
		return nil
	}
	cmd, rest, err := lookup(args, prog)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return invalidf("help: unexpected argument %q", rest[0])
	}
	fs := flag.NewFlagSet(prog+" "+cmd.name, flag.ContinueOnError)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	(&globals{}).register(fs)
	commandUsage(env.Stdout, cmd, fs, prog)
	return nil
}

func commandUsage(w io.Writer, cmd command, fs *flag.FlagSet, prog string) {
	fmt.Fprintf(w, "Usage: %s %s %s\n\n%s.\n\nFlags:\n", prog, cmd.name, cmd.args, capitalize(cmd.summary))
	// The flag package prints "-name"; the CLI is documented, and completes, with "--name".
	var defaults strings.Builder
	fs.SetOutput(&defaults)
	fs.PrintDefaults()
	fmt.Fprint(w, strings.ReplaceAll("\n"+defaults.String(), "\n  -", "\n  --")[1:])
	fmt.Fprintf(w, "\nExit status: 0 ok, 1 runtime error, 2 usage error or invalid input (see %s help).\n", prog)
}

// capitalize starts a sentence: the first letter upper-cased, unless the sentence
// starts with a name that is written in lower case (oomd).
func capitalize(s string) string {
	if s == "" || strings.HasPrefix(s, "oomd") {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// runner holds what every command needs: the global options and where to write.
type runner struct {
	g   *globals
	env Env
}

// callCtx bounds one call (or the connect) by --timeout.
func (r *runner) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.g.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, r.g.timeout)
}

// withOomd connects to oomd and runs fn; ctx, handed to fn, bounds both by --timeout.
func (r *runner) withOomd(ctx context.Context, fn func(ctx context.Context, c *ctlclient.Client) error) error {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	c, err := r.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, c)
}

// dial connects once to oomd, turning the usual failures into messages that say what
// to do.
func (r *runner) dial(ctx context.Context) (*ctlclient.Client, error) {
	c, err := ctlclient.DialOnce(ctx, r.g.socket, r.env.Log)
	if err != nil {
		return nil, r.explain(dialError(r.g.socket, err))
	}
	return c, nil
}

// explain turns a context deadline into a message naming --timeout.
func (r *runner) explain(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		return fmt.Errorf("oomd did not answer within %v (--timeout; is it stopped or overloaded?): %w", r.g.timeout, err)
	}
	return err
}
