package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/testutil"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// helperEnv makes the test binary run oomctl itself (see TestMain): the permission test
// runs it as another user.
const helperEnv = "OOMCTL_TEST_RUN_AS_OOMCTL"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(Main(context.Background(), os.Args[1:], Env{Stdout: os.Stdout, Stderr: os.Stderr}))
	}
	// Every capability oomctl (or the fake) takes must be released.
	testutil.Main(m)
}

// oomctl runs Main with args and a fixed environment and returns its exit code and
// output.
func oomctl(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code = Main(ctx, args, Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }})
	return code, out.String(), errb.String()
}

func TestParseSize(t *testing.T) {
	saved := memTotal
	t.Cleanup(func() { memTotal = saved })
	real, err := saved()
	require.NoError(t, err, "this machine's /proc/meminfo")
	assert.Greater(t, real, uint64(1<<20))
	memTotal = func() (uint64, error) { return 16 << 30, nil }
	for _, tc := range []struct {
		in   string
		want uint64
		err  string
	}{
		{in: "0", want: 0},
		{in: "4096", want: 4096},
		{in: "8M", want: 8 << 20},
		{in: "8MiB", want: 8 << 20},
		{in: "8mib", want: 8 << 20},
		{in: "512k", want: 512 << 10},
		{in: "2G", want: 2 << 30},
		{in: "1TiB", want: 1 << 40},
		{in: "100B", want: 100},
		{in: " 3 M ", want: 3 << 20},
		{in: "1.5G", want: 3 << 29},
		{in: "0.5GiB", want: 1 << 29},
		{in: "512MB", want: 512_000_000},
		{in: "2GB", want: 2_000_000_000},
		{in: "1.5KB", want: 1500},
		{in: "0.1", want: 0},
		{in: "25%", want: 4 << 30},
		{in: "12.5 %", want: 2 << 30},
		{in: "", err: `"" is not a size`},
		{in: "M", err: `"M" is not a size`},
		{in: ".5G", err: `".5G" is not a size`},
		{in: "5.G", err: `"5.G" is not a size`},
		{in: "1e3", err: `"1e3" is not a size`},
		{in: "-1", err: `"-1" is not a size`},
		{in: "8XB", err: `"8XB" is not a size`},
		{in: "16777216T", err: `"16777216T" is too large`},
		{in: "18446744073709551616", err: `is too large`},
	} {
		got, err := parseSize(tc.in)
		if tc.err != "" {
			assert.ErrorContains(t, err, tc.err, "parseSize(%q)", tc.in)
			continue
		}
		if assert.NoError(t, err, "parseSize(%q)", tc.in) {
			assert.Equal(t, tc.want, got, "parseSize(%q)", tc.in)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		in   uint64
		want string
	}{
		{0, "0"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{1536, "1.5 KiB"},
		{8 << 20, "8 MiB"},
		{(8 << 20) + (1 << 19), "8.5 MiB"},
		{1<<20 - 1, "1 MiB"}, // 1023.999 KiB rounds up to the next unit
		{1 << 50, "1 PiB"},
		{1<<64 - 1, "16 EiB"},
	} {
		assert.Equal(t, tc.want, humanBytes(tc.in), "humanBytes(%d)", tc.in)
	}
}

func TestParseOverride(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want policy.SubjectLimit
		err  string
	}{
		{in: "db=1G:2G", want: policy.SubjectLimit{Subject: "db", SoftBytes: 1 << 30, HardBytes: 2 << 30}},
		{in: "hog=4194304:8388608", want: policy.SubjectLimit{Subject: "hog", SoftBytes: 4 << 20, HardBytes: 8 << 20}},
		{in: "a.b-c=1k:1k", want: policy.SubjectLimit{Subject: "a.b-c", SoftBytes: 1024, HardBytes: 1024}},
		{in: "db", err: `"db": want subject=soft:hard`},
		{in: "=1G:2G", err: `"=1G:2G": want subject=soft:hard`},
		{in: "db=1G", err: `"db=1G": want subject=soft:hard`},
		{in: "db=x:2G", err: `db: soft: "x" is not a size`},
		{in: "db=1G:", err: `db: hard: "" is not a size`},
	} {
		got, err := parseOverride(tc.in)
		if tc.err != "" {
			assert.ErrorContains(t, err, tc.err, "parseOverride(%q)", tc.in)
			continue
		}
		if assert.NoError(t, err, "parseOverride(%q)", tc.in) {
			assert.Equal(t, tc.want, got, "parseOverride(%q)", tc.in)
		}
	}
}

// TestSetFlagsApply: field flags change only what they name, over the policy in force.
func TestSetFlagsApply(t *testing.T) {
	cur := policy.DefaultPolicy()
	cur.Critical = []string{"db"}
	cur.Overrides = []policy.SubjectLimit{{Subject: "hog", SoftBytes: 1 << 20, HardBytes: 2 << 20}}
	with := func(edit func(p *policy.Policy)) policy.Policy {
		p := cur
		p.Critical = append([]string(nil), cur.Critical...)
		p.Overrides = append([]policy.SubjectLimit(nil), cur.Overrides...)
		edit(&p)
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		want policy.Policy
		err  string // from parsing or applying
	}{
		{name: "hard only", args: []string{"--hard-bytes", "1G"}, want: with(func(p *policy.Policy) { p.HardBytes = 1 << 30 })},
		{name: "scalars", args: []string{"--soft-bytes=1M", "--sample-ms", "20", "--kill-budget", "3", "--kill-window-ticks", "7", "--oom-timeout-ms", "5000"},
			want: with(func(p *policy.Policy) {
				p.SoftBytes, p.SampleMs, p.KillBudget, p.KillWindowTicks, p.OOMTimeoutMs = 1<<20, 20, 3, 7, 5000
			})},
		{name: "critical replaces", args: []string{"--critical", "a, b,"}, want: with(func(p *policy.Policy) { p.Critical = []string{"a", "b"} })},
		{name: "critical cleared", args: []string{"--critical", ""}, want: with(func(p *policy.Policy) { p.Critical = nil })},
		{name: "override replaces and appends", args: []string{"--override", "hog=3M:4M", "--override", "db=1G:2G"},
			want: with(func(p *policy.Policy) {
				p.Overrides = []policy.SubjectLimit{{Subject: "hog", SoftBytes: 3 << 20, HardBytes: 4 << 20}, {Subject: "db", SoftBytes: 1 << 30, HardBytes: 2 << 30}}
			})},
		{name: "remove override", args: []string{"--remove-override", "hog"}, want: with(func(p *policy.Policy) { p.Overrides = []policy.SubjectLimit{} })},
		{name: "remove unknown override", args: []string{"--remove-override", "nope"}, err: `--remove-override nope: the policy in force has no override for "nope"`},
		{name: "override twice", args: []string{"--override", "a=1:2", "--override", "a=1:3"}, err: `invalid value "a=1:3" for flag -override: a is given twice`},
		{name: "uint32 overflow", args: []string{"--sample-ms", "4294967296"}, err: `"4294967296" is out of range (at most 4294967295)`},
		{name: "not a number", args: []string{"--kill-budget", "two"}, err: `"two" is not a whole number`},
		{name: "bad size", args: []string{"--hard-bytes", "lots"}, err: `"lots" is not a size`},
		{name: "victims", args: []string{"--victim-level", "warning", "--victim-prefer-points", "700", "--victim-avoid-points=300",
			"--victim-settle-ticks", "20", "--victim-dry-run", "--victim-prefer", "cache, tmp", "--victim-never", "db"},
			want: with(func(p *policy.Policy) {
				p.Victims = policy.Victims{Level: policy.VictimLevelWarning, PreferPoints: 700, AvoidPoints: 300, SettleTicks: 20, DryRun: true,
					Prefer: []string{"cache", "tmp"}, Never: []string{"db"}}
			})},
		{name: "signals", args: []string{"--signal", "kernel", "--under-report-margin", "32M", "--under-report-ticks", "5", "--override", "app=1M:2M:cooperative"},
			want: with(func(p *policy.Policy) {
				coop := policy.SignalCooperative
				p.Signal, p.UnderReport = policy.SignalKernel, policy.UnderReport{MarginBytes: 32 << 20, Ticks: 5}
				p.Overrides = []policy.SubjectLimit{{Subject: "hog", SoftBytes: 1 << 20, HardBytes: 2 << 20}, {Subject: "app", SoftBytes: 1 << 20, HardBytes: 2 << 20, Signal: &coop}}
			})},
		{name: "bad signal", args: []string{"--signal", "rss"}, err: `signal "rss": want max, kernel or cooperative`},
		{name: "bad override signal", args: []string{"--override", "a=1:2:rss"}, err: `a: signal "rss": want max, kernel or cooperative`},
		{name: "dry run", args: []string{"--dry-run"}, want: with(func(p *policy.Policy) { p.DryRun = true })},
		{name: "victims off", args: []string{"--victim-level", "off"}, want: with(func(p *policy.Policy) { p.Victims.Level = policy.VictimLevelOff })},
		{name: "victims default level", args: []string{"--victim-level", "default", "--victim-dry-run=false"}, want: with(func(p *policy.Policy) {})},
		{name: "victims bad level", args: []string{"--victim-level", "oom"}, err: `victim level "oom": want off, warning or imminentOom`},
		{name: "victims points overflow", args: []string{"--victim-avoid-points", "-1"}, err: `"-1" is not a whole number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			f := registerSetFlags(fs)
			err := fs.Parse(tc.args)
			var got policy.Policy
			if err == nil {
				require.True(t, f.edits())
				got, err = f.apply(cur)
			}
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, []string{"db"}, cur.Critical, "apply must not modify the policy it was given")
			assert.Len(t, cur.Overrides, 1, "apply must not modify the policy it was given")
		})
	}
}

// TestUsageErrors: bad command lines exit 2 with a message saying what is wrong, and
// never reach the socket.
func TestUsageErrors(t *testing.T) {
	noSocket := map[string]string{"OOMD_SOCKET": "/nonexistent/oomd.sock"}
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{nil, "Usage:\n  oomctl [global flags] <command> [flags]"},
		{[]string{"frobnicate"}, `oomctl: unknown command "frobnicate" (see oomctl help)`},
		{[]string{"policy"}, "oomctl: policy: say get or set"},
		{[]string{"policy", "delete"}, "oomctl: policy delete: unknown command: say get or set"},
		{[]string{"status", "extra"}, `oomctl: status: unexpected argument "extra"`},
		{[]string{"status", "--bogus"}, "oomctl: flag provided but not defined: --bogus"},
		{[]string{"events", "--since", "x"}, `oomctl: invalid value "x" for flag --since`},
		{[]string{"events", "--limit"}, "oomctl: flag needs an argument: --limit"},
		{[]string{"events", "--since", "x for flag -y"}, `oomctl: invalid value "x for flag -y" for flag --since`},
		{[]string{"events", "--follow=maybe"}, `oomctl: invalid boolean value "maybe" for --follow`},
		{[]string{"audit", "--follow"}, "oomctl: flag provided but not defined: --follow"},
		{[]string{"--timeout", "-1s", "status"}, "oomctl: --timeout -1s: must not be negative"},
		{[]string{"policy", "set"}, "oomctl: policy set: nothing to set; give field flags"},
		{[]string{"policy", "set", "--file", "p.json", "--hard-bytes", "1G"}, "oomctl: policy set: give either --file or field flags, not both"},
		{[]string{"policy", "set", "--override", "db"}, `oomctl: invalid value "db" for flag --override: "db": want subject=soft:hard`},
		{[]string{"policy", "set", "--file", "/nonexistent/p.json"}, "oomctl: policy file: open /nonexistent/p.json: no such file or directory"},
	} {
		code, stdout, stderr := oomctl(t, noSocket, tc.args...)
		assert.Equal(t, ExitUsage, code, "oomctl %q", tc.args)
		assert.Contains(t, stderr, tc.stderr, "oomctl %q", tc.args)
		assert.Empty(t, stdout, "oomctl %q", tc.args)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, stdout, stderr := oomctl(t, nil, args...)
		assert.Equal(t, ExitOK, code, "oomctl %q", args)
		assert.Empty(t, stderr)
		for _, want := range []string{"policy set", "events [--since N] [--limit N] [--follow]", "Exit status:",
			"0  success", "1  runtime error", "2  usage error or invalid input"} {
			assert.Contains(t, stdout, want, "oomctl %q", args)
		}
	}
	code, stdout, _ := oomctl(t, nil, "help", "policy", "set")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "-override subject=soft:hard")
	code, stdout, _ = oomctl(t, nil, "events", "--help")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, stdout, "-follow")
}

// TestDialErrorMessages: the text a user sees for each way of not reaching oomd. This
// is also the permission-denied coverage when the tests run as root (where the kernel
// skips the permission check); TestPermissionDenied adds the real thing when it can.
func TestDialErrorMessages(t *testing.T) {
	const p = "/run/oomd/oomd.sock"
	wrap := func(sentinel, cause error) error { return fmt.Errorf("%w: %w", sentinel, cause) }
	for _, tc := range []struct {
		err  error
		want string
	}{
		{wrap(ctlclient.ErrNotRunning, &fs.PathError{Op: "stat", Path: p, Err: syscall.ENOENT}),
			"oomd is not running: no socket at /run/oomd/oomd.sock (is the stack up? set --socket or OOMD_SOCKET)"},
		{wrap(ctlclient.ErrNotRunning, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}),
			"oomd is not running: nothing accepts connections on /run/oomd/oomd.sock (a socket left by a stopped oomd? set --socket or OOMD_SOCKET)"},
		{wrap(ctlclient.ErrNoAccess, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}),
			"cannot access /run/oomd/oomd.sock: permission denied (the socket is owner-only; run as the user that runs oomd)"},
		{wrap(ctlclient.ErrNoAccess, &fs.PathError{Op: "stat", Path: p, Err: syscall.EACCES}),
			"cannot access /run/oomd/oomd.sock: permission denied (the socket is owner-only; run as the user that runs oomd)"},
		{fmt.Errorf("%s: %w", p, ctlclient.ErrNotSocket),
			"/run/oomd/oomd.sock is not a socket (set --socket or OOMD_SOCKET to oomd's control socket)"},
		{errors.New("bootstrap: boom"), "connect to oomd at /run/oomd/oomd.sock: bootstrap: boom"},
	} {
		assert.Equal(t, tc.want, dialError(p, tc.err).Error())
	}
}

// TestNotRunning: the real failures, fast and without retrying.
func TestNotRunning(t *testing.T) {
	dir := testutil.SocketDir(t)
	missing := filepath.Join(dir, "oomd.sock")

	start := time.Now()
	code, stdout, stderr := oomctl(t, map[string]string{"OOMD_SOCKET": missing}, "status")
	assert.Equal(t, ExitRuntime, code)
	assert.Empty(t, stdout)
	assert.Equal(t, "oomctl: oomd is not running: no socket at "+missing+" (is the stack up? set --socket or OOMD_SOCKET)\n", stderr)
	assert.Less(t, time.Since(start), 5*time.Second, "a missing socket must fail at once, not retry")

	// --socket wins over OOMD_SOCKET.
	code, _, stderr = oomctl(t, map[string]string{"OOMD_SOCKET": "/elsewhere.sock"}, "events", "--socket", missing)
	assert.Equal(t, ExitRuntime, code)
	assert.Contains(t, stderr, "no socket at "+missing)

	// Default path when neither is set.
	_, _, stderr = oomctl(t, nil, "status")
	assert.Contains(t, stderr, "at "+DefaultSocket+" ")

	// A socket file nobody listens on (oomd died without removing it).
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	require.NoError(t, err)
	l.SetUnlinkOnClose(false)
	require.NoError(t, l.Close())
	code, _, stderr = oomctl(t, nil, "--socket", stale, "policy", "get")
	assert.Equal(t, ExitRuntime, code)
	assert.Equal(t, "oomctl: oomd is not running: nothing accepts connections on "+stale+" (a socket left by a stopped oomd? set --socket or OOMD_SOCKET)\n", stderr)

	// Not a socket at all.
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	code, _, stderr = oomctl(t, nil, "--socket", file, "audit")
	assert.Equal(t, ExitRuntime, code)
	assert.Equal(t, "oomctl: "+file+" is not a socket (set --socket or OOMD_SOCKET to oomd's control socket)\n", stderr)
}

// TestPermissionDenied: an owner-only socket (here mode 0000, with oomd listening) is
// refused to anyone else. Root bypasses the check, so as root the test runs oomctl as
// the user nobody; if that is impossible it is skipped (TestDialErrorMessages still
// covers the message).
func TestPermissionDenied(t *testing.T) {
	f := startFake(t)
	sock := f.path
	require.NoError(t, os.Chmod(sock, 0))
	want := "oomctl: cannot access " + sock + ": permission denied (the socket is owner-only; run as the user that runs oomd)\n"

	if os.Geteuid() != 0 {
		code, stdout, stderr := oomctl(t, nil, "--socket", sock, "status")
		assert.Equal(t, ExitRuntime, code)
		assert.Empty(t, stdout)
		assert.Equal(t, want, stderr)
		return
	}
	// As root: copy this test binary where nobody can run it and make the socket's
	// directory searchable, so only the socket's own mode stands in the way.
	require.NoError(t, os.Chmod(filepath.Dir(sock), 0o755))
	exe, err := os.Executable()
	require.NoError(t, err)
	bin := filepath.Join(filepath.Dir(sock), "oomctl.test")
	b, err := os.ReadFile(exe)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	cmd := exec.Command(bin, "--socket", sock, "status")
	cmd.Env = []string{helperEnv + "=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Skipf("cannot run oomctl as nobody here (%v); the message is covered by TestDialErrorMessages", err)
	}
	assert.Equal(t, ExitRuntime, ee.ExitCode(), "stderr: %s", stderr.String())
	assert.Empty(t, stdout.String())
	assert.Equal(t, want, stderr.String())
}

func sampleStatus() wire.Status {
	return wire.Status{
		Tick: 1234, PolicyVersion: 2, LastEventSeq: 17, Kills: 1, Throttled: 2,
		AcceptedSamples: 120, RejectedSamples: 3, Level: oomdpb.PressureLevel_normal, InjectEnabled: true,
		Subjects: []wire.SubjectStatus{
			// Deliberately out of order: the table sorts by subject id.
			{Subject: "oomd", Instance: 1, State: oomdpb.SubjectState_normal, SoftBytes: 256 << 20, HardBytes: 512 << 20, Critical: true,
				Signal: oomdpb.Signal_max, CgroupMode: oomdpb.CgroupMode_none},
			{Subject: "hog", Instance: 3, State: oomdpb.SubjectState_terminating, Bytes: 16 << 20, SoftBytes: 4 << 20, HardBytes: 8 << 20,
				KernelBytes: 18 << 20, CooperativeBytes: 16 << 20, Published: true, Signal: oomdpb.Signal_cooperative, CgroupMode: oomdpb.CgroupMode_v2},
			{Subject: "spoofer", Instance: 1, State: oomdpb.SubjectState_normal, Bytes: 1536, SoftBytes: 256 << 20, HardBytes: 512 << 20, Rejected: 3,
				KernelBytes: 1536, Signal: oomdpb.Signal_kernel, CgroupMode: oomdpb.CgroupMode_proc},
		},
	}
}

func TestStatus(t *testing.T) {
	f := startFake(t)
	f.do(func() { f.status = sampleStatus() })

	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "status")
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, `tick 1234, policy version 2, last event seq 17
kills 1, denied 0, throttled 2; samples accepted 120, rejected 3
inject enabled (test mode)

SUBJECT  STATE        BYTES    SOFT     HARD     SIGNAL       KERNEL   PUBLISHED  CGROUP  CRITICAL  REJECTED
hog      terminating  16 MiB   4 MiB    8 MiB    cooperative  18 MiB   16 MiB     v2      no        0
oomd     normal       0        256 MiB  512 MiB  max          -        -          none    yes       0
spoofer  normal       1.5 KiB  256 MiB  512 MiB  kernel       1.5 KiB  -          proc    no        3
(cgroup proc: no writable memory cgroup; the /proc process tree is weaker: a process that leaves its group escapes)
`, stdout)

	code, stdout, _ = oomctl(t, nil, "status", "--json", "--socket", f.path)
	require.Equal(t, ExitOK, code)
	assert.Equal(t, `{"tick":1234,"policyVersion":2,"lastEventSeq":17,"kills":1,"denied":0,"throttled":2,`+
		`"acceptedSamples":120,"rejectedSamples":3,"level":"normal","memAvailableBytes":0,"haltClaimed":false,`+
		`"injectEnabled":true,"truncated":false,"subjects":[`+
		`{"subject":"hog","instance":3,"state":"terminating","bytes":16777216,"softBytes":4194304,"hardBytes":8388608,"critical":false,"rejected":0,`+
		`"kernelBytes":18874368,"cooperativeBytes":16777216,"published":true,"signal":"cooperative","cgroupMode":"v2"},`+
		`{"subject":"oomd","instance":1,"state":"normal","bytes":0,"softBytes":268435456,"hardBytes":536870912,"critical":true,"rejected":0,`+
		`"kernelBytes":0,"cooperativeBytes":0,"published":false,"signal":"max","cgroupMode":"none"},`+
		`{"subject":"spoofer","instance":1,"state":"normal","bytes":1536,"softBytes":268435456,"hardBytes":536870912,"critical":false,"rejected":3,`+
		`"kernelBytes":1536,"cooperativeBytes":0,"published":false,"signal":"kernel","cgroupMode":"proc"}],`+
		`"victim":"","victimReason":"","victimHold":"","eventSeqBase":0,"startedAtNs":0,`+
		`"auditWaiting":0,"auditLogdDown":false,"auditSpilled":0}`+"\n", stdout)

	f.do(func() {
		f.status = wire.Status{Tick: 5, Level: oomdpb.PressureLevel_warning, MemAvailableBytes: 3 << 30, HaltClaimed: true, Truncated: true,
			Subjects: []wire.SubjectStatus{{Subject: "a", State: oomdpb.SubjectState_exited}}}
	})
	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "status")
	assert.Equal(t, `tick 5, policy version 0, last event seq 0
kills 0, denied 0, throttled 0; samples accepted 0, rejected 0
pressure level warning (MemAvailable 3 GiB); HALT CLAIMED (system OOM teardown under way)

SUBJECT  STATE   BYTES  SOFT  HARD  SIGNAL  KERNEL  PUBLISHED  CGROUP  CRITICAL  REJECTED
a        exited  0      0     0     max     -       -          none    no        0
(only the first 1 subjects are shown: oomd bounds one status answer)
`, stdout)
}

// TestStatusUnknownEnumerants: enumerants a newer oomd may add print as unknown(<n>),
// never as a value this oomctl knows.
func TestStatusUnknownEnumerants(t *testing.T) {
	f := startFake(t)
	f.do(func() {
		f.status = wire.Status{Level: 9, Subjects: []wire.SubjectStatus{{Subject: "a", State: 8, Signal: 7, CgroupMode: 6}}}
	})
	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "--json", "status")
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stdout, `"level":"unknown(9)"`)
	assert.Contains(t, stdout, `"state":"unknown(8)"`)
	assert.Contains(t, stdout, `"signal":"unknown(7)","cgroupMode":"unknown(6)"`)
}

// TestStatusSaysWhenAuditIsDown: a logd oomd cannot reach is said loudly, with what
// waits (a kill waits for its own record) and what sits in the spill file.
func TestStatusSaysWhenAuditIsDown(t *testing.T) {
	f := startFake(t)
	for _, c := range []struct {
		st   wire.Status
		want string
	}{
		{wire.Status{AuditLogdDown: true, AuditWaiting: 2}, "AUDIT: logd NOT CONNECTED, 2 records waiting; kills wait until they are durable\n"},
		{wire.Status{AuditLogdDown: true, AuditSpilled: 7}, "AUDIT: logd NOT CONNECTED; 7 records in the spill file, 0 waiting\n"},
		{wire.Status{AuditSpilled: 7, AuditWaiting: 1}, "audit: logd connected; 7 records in the spill file, 1 waiting\n"},
	} {
		f.do(func() { f.status = c.st })
		code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "status")
		require.Equal(t, ExitOK, code, stderr)
		assert.Contains(t, stdout, c.want)
	}
	f.do(func() { f.status = wire.Status{} })
	_, stdout, _ := oomctl(t, nil, "--socket", f.path, "status")
	assert.NotContains(t, stdout, "audit", "a healthy audit trail says nothing")
}

// TestStatusVictim: the victim preview is one line under the notes, saying whom oomd
// would pick, why, and what holds it back; nothing when victim selection is off.
func TestStatusVictim(t *testing.T) {
	f := startFake(t)
	const reason = "pressure victim: level=imminentOom score=97 runners-up=b:35,a:19"
	for _, tc := range []struct {
		hold, want string
	}{
		{"", "victim leaker: decided at the next tick (" + reason + ")\n"},
		{"dry run", "victim would be leaker (" + reason + "); held: dry run\n"},
		{"settling until tick 40", "victim would be leaker (" + reason + "); held: settling until tick 40\n"},
		{"victims off", ""},
		{"levels off", ""},
	} {
		f.do(func() {
			f.status = wire.Status{Tick: 5, Victim: "leaker", VictimReason: reason, VictimHold: tc.hold}
		})
		code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "status")
		require.Equal(t, ExitOK, code, stderr)
		assert.Equal(t, "tick 5, policy version 0, last event seq 0\nkills 0, denied 0, throttled 0; samples accepted 0, rejected 0\n"+
			tc.want+"\nno subjects\n", stdout, "hold %q", tc.hold)
	}
	_, stdout, _ := oomctl(t, nil, "--socket", f.path, "--json", "status")
	assert.Contains(t, stdout, `"victim":"leaker","victimReason":"`+reason+`","victimHold":"levels off",`)
}

func TestPolicyGet(t *testing.T) {
	f := startFake(t)
	f.do(func() {
		f.pol.Critical = []string{"db", "sshd"}
		f.pol.Overrides = []policy.SubjectLimit{{Subject: "hog", SoftBytes: 4 << 20, HardBytes: 8 << 20}}
		f.version = 3
	})

	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "policy", "get")
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, `version          3
softBytes        268435456 (256 MiB)
hardBytes        536870912 (512 MiB)
sampleMs         100
killBudget       2 per killWindowTicks
killWindowTicks  50
critical         db, sshd (always critical too: execd, init, logd, oomd, policyd, samgrd)
oomTimeoutMs     default (30000)
levels           off
signal           max
underReport      kernel > published + 67108864 (64 MiB) for 3 ticks
override         hog: soft 4194304 (4 MiB), hard 8388608 (8 MiB)
victims          at imminentOom (default), prefer +500, avoid -500 points, settle 10 ticks; inactive while levels are off
`, stdout)

	code, stdout, _ = oomctl(t, nil, "--socket", f.path, "--json", "policy", "get")
	require.Equal(t, ExitOK, code)
	assert.Equal(t, `{"version":3,"policy":{"softBytes":268435456,"hardBytes":536870912,"sampleMs":100,"killBudget":2,`+
		`"killWindowTicks":50,"critical":["db","sshd"],"overrides":[{"subject":"hog","softBytes":4194304,"hardBytes":8388608}],"levels":{}}}`+"\n", stdout)

	// What get --json prints under "policy" is a policy file set --file accepts.
	var v policyView
	require.NoError(t, json.Unmarshal([]byte(stdout), &v))
	pol, err := json.Marshal(v.Policy)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "p.json")
	require.NoError(t, os.WriteFile(file, pol, 0o600))
	code, stdout, stderr = oomctl(t, nil, "--socket", f.path, "policy", "set", "--file", file)
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, "policy version 4 in force\n", stdout)
	assert.Equal(t, v.Policy, f.policy())
}

func TestPolicySet(t *testing.T) {
	f := startFake(t)
	f.do(func() { f.pol.Critical = []string{"db"} })

	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "policy", "set", "--hard-bytes", "1G", "--override", "hog=4M:8M")
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, "policy version 2 in force\n", stdout)
	want := policy.DefaultPolicy()
	want.HardBytes = 1 << 30
	want.Critical = []string{"db"}
	want.Overrides = []policy.SubjectLimit{{Subject: "hog", SoftBytes: 4 << 20, HardBytes: 8 << 20}}
	assert.Equal(t, want, f.policy(), "flags apply over the policy in force")

	code, stdout, _ = oomctl(t, nil, "--socket", f.path, "policy", "set", "--json", "--kill-budget", "5")
	require.Equal(t, ExitOK, code)
	assert.Equal(t, `{"version":3}`+"\n", stdout)
	assert.Equal(t, uint32(5), f.policy().KillBudget)
	assert.Equal(t, uint64(1<<30), f.policy().HardBytes)

	// oomd refuses: exit 2, oomd's words naming the field and the bound, nothing changed.
	before := f.policy()
	code, stdout, stderr = oomctl(t, nil, "--socket", f.path, "policy", "set", "--hard-bytes", "1M")
	assert.Equal(t, ExitUsage, code)
	assert.Empty(t, stdout)
	assert.Equal(t, "oomctl: oomd refused the policy and keeps the one in force: "+
		"invalid policy: hardBytes = 1048576: must be >= softBytes (268435456)\n", stderr)
	code, _, stderr = oomctl(t, nil, "--socket", f.path, "policy", "set", "--override", "Bad=1:2")
	assert.Equal(t, ExitUsage, code)
	assert.Contains(t, stderr, `invalid policy: overrides[1].subject = "Bad": must be a subject id`)
	assert.Equal(t, before, f.policy())
	assert.Equal(t, 2, f.sets())

	// Someone sets a policy between our read and our write: ours is refused, not
	// applied over theirs, and the user is told to run the command again.
	f.do(func() { f.changeAfterGet = true })
	code, stdout, stderr = oomctl(t, nil, "--socket", f.path, "policy", "set", "--kill-budget", "7")
	assert.Equal(t, ExitRuntime, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, "someone changed the policy while we edited it, so ours was not applied; run the command again")
	assert.Equal(t, before, f.policy())
	assert.Equal(t, 2, f.sets())
}

// TestPolicySetVictims: the victim flags reach oomd over the wire, and oomd's
// validation of the victims block comes back naming the field.
func TestPolicySetVictims(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "policy", "set", "--victim-level", "warning",
		"--victim-settle-ticks", "5", "--victim-dry-run", "--victim-avoid", "db", "--victim-never", "sshd")
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, "policy version 2 in force\n", stdout)
	assert.Equal(t, policy.Victims{Level: policy.VictimLevelWarning, SettleTicks: 5, DryRun: true, Avoid: []string{"db"}, Never: []string{"sshd"}},
		f.policy().Victims)

	code, stdout, stderr = oomctl(t, nil, "--socket", f.path, "policy", "set", "--victim-prefer", "db")
	assert.Equal(t, ExitUsage, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, `invalid policy: victims.avoid[0] = "db": must be in one preference list only (it is also victims.prefer[0])`)

	code, stdout, stderr = oomctl(t, nil, "--socket", f.path, "policy", "get")
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stdout, "victims          at warning, prefer +500, avoid -500 points, settle 5 ticks, dry run (reports, kills no victim); inactive while levels are off\n"+
		"victims avoid    db\nvictims never    sshd\n")
}

func TestPolicySetFile(t *testing.T) {
	f := startFake(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	ok := write("ok.json", `{"softBytes": 4194304, "hardBytes": 8388608, "sampleMs": 10}`)
	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "policy", "set", "--file", ok)
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, "policy version 2 in force\n", stdout)
	want := policy.DefaultPolicy()
	want.SoftBytes, want.HardBytes, want.SampleMs = 4<<20, 8<<20, 10
	assert.Equal(t, want, f.policy(), "a file replaces the policy over the defaults")

	for _, tc := range []struct{ name, body, stderr string }{
		{"unknown.json", "{\n  \"hardLimit\": 1\n}", `oomctl: policy file %s: json: unknown field "hardLimit"`},
		{"syntax.json", "{\n  \"hardBytes\": 1,\n}", `oomctl: policy file %s: line 3, column `},
		{"type.json", "{\n  \"sampleMs\": \"fast\"\n}", `oomctl: policy file %s: line 2, column `},
		{"invalid.json", `{"sampleMs": 5}`, `oomctl: policy file %s: invalid policy: sampleMs = 5: must be in 10..60000`},
	} {
		p := write(tc.name, tc.body)
		code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "policy", "set", "--file", p)
		assert.Equal(t, ExitUsage, code, tc.name)
		assert.Empty(t, stdout, tc.name)
		assert.Contains(t, stderr, fmt.Sprintf(tc.stderr, p), tc.name)
	}
	assert.Equal(t, 1, f.sets(), "an invalid file is never sent")

	// "-" reads the policy from stdin.
	var out, errb bytes.Buffer
	code = Main(context.Background(), []string{"--socket", f.path, "policy", "set", "--file", "-"},
		Env{Stdin: strings.NewReader(`{"softBytes": 1048576, "hardBytes": 2097152}`), Stdout: &out, Stderr: &errb})
	require.Equal(t, ExitOK, code, errb.String())
	assert.Equal(t, "policy version 3 in force\n", out.String())
	assert.Equal(t, uint64(2<<20), f.policy().HardBytes)
}

func testEvents() []policy.Event {
	return []policy.Event{
		{Seq: 1, Tick: 0, Kind: policy.EventSubjectRegistered, Subject: "hog"},
		{Seq: 2, Tick: 3, Kind: policy.EventSoftExceeded, Subject: "hog", Bytes: 5 << 20, Limit: 4 << 20},
		{Seq: 3, Tick: 4, Kind: policy.EventKillDecided, Subject: "hog", Bytes: 16 << 20, Limit: 8 << 20, Decision: 1},
		{Seq: 4, Tick: 9, Kind: policy.EventKilled, Subject: "hog", Bytes: 16 << 20, Limit: 8 << 20, Decision: 1},
		{Seq: 5, Tick: 9, Kind: policy.EventSubjectExited, Subject: "hog", Reason: "signal=terminated"},
		{Seq: 6, Tick: 10, Kind: policy.EventKind(99)},
	}
}

func TestEvents(t *testing.T) {
	f := startFake(t)
	f.do(func() {
		f.events = testEvents()
		f.dropped = 2 // the ring overwrote seq 1 and 2
	})

	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "events")
	require.Equal(t, ExitOK, code, stderr)
	assert.Equal(t, `missed=2 (overwritten in oomd's event ring before they were read)
seq=3 tick=4 killDecided subject=hog bytes=16MiB limit=8MiB decision=1
seq=4 tick=9 killed subject=hog bytes=16MiB limit=8MiB decision=1
seq=5 tick=9 subjectExited subject=hog reason=signal=terminated
seq=6 tick=10 unknown
`, stdout)

	code, stdout, _ = oomctl(t, nil, "--socket", f.path, "events", "--json", "--since", "3", "--limit", "2")
	require.Equal(t, ExitOK, code)
	assert.Equal(t, `{"seq":4,"tick":9,"kind":"killed","subject":"hog","bytes":16777216,"limit":8388608,"decision":1,"reason":"","wallTimeNs":0}
{"seq":5,"tick":9,"kind":"subjectExited","subject":"hog","bytes":0,"limit":0,"decision":0,"reason":"signal=terminated","wallTimeNs":0}
`, stdout)

	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "events", "--json", "--since", "5")
	assert.Equal(t, `{"seq":6,"tick":10,"kind":"unknown(99)","subject":"","bytes":0,"limit":0,"decision":0,"reason":"","wallTimeNs":0}`+"\n", stdout)
	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "events", "--json", "--since", "0", "--limit", "1")
	assert.Equal(t, `{"missed":2}`+"\n"+`{"seq":3,"tick":4,"kind":"killDecided","subject":"hog","bytes":16777216,"limit":8388608,"decision":1,"reason":"","wallTimeNs":0}`+"\n", stdout)
	code, stdout, _ = oomctl(t, nil, "--socket", f.path, "events", "--since", "6")
	assert.Equal(t, ExitOK, code)
	assert.Empty(t, stdout)
}

// TestEventsPaging: more events than one page (1024) are all printed, in order.
func TestEventsPaging(t *testing.T) {
	f := startFake(t)
	f.do(func() {
		for i := uint64(1); i <= 2500; i++ {
			f.events = append(f.events, policy.Event{Seq: i, Tick: i, Kind: policy.EventSoftCleared, Subject: "s"})
		}
	})
	code, stdout, _ := oomctl(t, nil, "--socket", f.path, "events")
	require.Equal(t, ExitOK, code)
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	require.Len(t, lines, 2500)
	assert.Equal(t, "seq=2500 tick=2500 softCleared subject=s", lines[2499])
	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "events", "--since", "1000", "--limit", "1030")
	lines = strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	require.Len(t, lines, 1030)
	assert.Equal(t, "seq=1001 tick=1001 softCleared subject=s", lines[0])
	assert.Equal(t, "seq=2030 tick=2030 softCleared subject=s", lines[1029])
}

// TestEventsFollow: follow subscribes from --since, prints each pushed batch as it
// arrives (including a missed report), and exits 0 when interrupted.
func TestEventsFollow(t *testing.T) {
	f := startFake(t)
	evs := testEvents()
	pr, pw := io.Pipe()
	var errb bytes.Buffer
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	exit := make(chan int, 1)
	go func() {
		exit <- Main(ctx, []string{"--socket", f.path, "events", "--follow", "--since", "2"}, Env{Stdout: pw, Stderr: &errb})
		pw.Close()
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			require.True(t, ok, "oomctl stopped printing; stderr: %s", errb.String())
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no line from events --follow within 10s")
			return ""
		}
	}

	select {
	case <-f.subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("oomctl did not subscribe")
	}
	f.do(func() { assert.Equal(t, uint64(2), f.subSince) })
	f.push(t, evs[2:3], 0)
	assert.Equal(t, "seq=3 tick=4 killDecided subject=hog bytes=16MiB limit=8MiB decision=1", next())
	f.push(t, evs[3:5], 7)
	assert.Equal(t, "missed=7 (overwritten in oomd's event ring before they could be sent)", next())
	assert.Equal(t, "seq=4 tick=9 killed subject=hog bytes=16MiB limit=8MiB decision=1", next())
	assert.Equal(t, "seq=5 tick=9 subjectExited subject=hog reason=signal=terminated", next())

	interrupt()
	select {
	case code := <-exit:
		assert.Equal(t, ExitOK, code, "stderr: %s", errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("events --follow did not exit after the interrupt")
	}
}

// TestEventsFollowLimitAndDisconnect: --limit ends follow after that many events; an
// oomd that goes away ends it with exit 1 and where to resume.
func TestEventsFollowLimitAndDisconnect(t *testing.T) {
	f := startFake(t)
	var out, errb bytes.Buffer
	exit := make(chan int, 1)
	go func() {
		exit <- Main(context.Background(), []string{"--socket", f.path, "--json", "events", "--follow", "--limit", "2"}, Env{Stdout: &out, Stderr: &errb})
	}()
	<-f.subscribed
	f.push(t, testEvents()[:1], 0)
	f.tryPush(testEvents()[1:3], 0) // oomctl exits within this batch
	select {
	case code := <-exit:
		assert.Equal(t, ExitOK, code, errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("events --follow --limit 2 did not exit after two events")
	}
	assert.Equal(t, `{"seq":1,"tick":0,"kind":"subjectRegistered","subject":"hog","bytes":0,"limit":0,"decision":0,"reason":"","wallTimeNs":0}
{"seq":2,"tick":3,"kind":"softExceeded","subject":"hog","bytes":5242880,"limit":4194304,"decision":0,"reason":"","wallTimeNs":0}
`, out.String())

	g := startFake(t)
	errb.Reset()
	go func() {
		exit <- Main(context.Background(), []string{"--socket", g.path, "events", "--follow"}, Env{Stdout: io.Discard, Stderr: &errb})
	}()
	<-g.subscribed
	g.push(t, testEvents()[:1], 0)
	g.srv.Close(time.Second) // oomd goes away: every connection drops
	select {
	case code := <-exit:
		assert.Equal(t, ExitRuntime, code)
		assert.Equal(t, "oomctl: oomd closed the connection (stopped or restarted?) after event seq 1; resume with --since 1\n", errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("events --follow did not notice oomd going away")
	}
}

func TestAudit(t *testing.T) {
	f := startFake(t)
	f.do(func() {
		f.audit = []wire.JournalEntry{
			{Seq: 7, Writer: "oomd", Record: policy.AuditRecord{WriterSeq: 1, Tick: 4, Kind: policy.EventKillDecided, Subject: "hog", Instance: 1,
				Bytes: 16 << 20, Limit: 8 << 20, Decision: 1, TracePos: "trace-1-000001.otr:4096"}},
			{Seq: 8, Writer: "oomd", Record: policy.AuditRecord{WriterSeq: 2, Tick: 5, Kind: policy.EventMemstatRejected, Subject: "spoofer", Instance: 2,
				Reason: "claimed=hog"}, AppendedAtNs: time.Date(2026, 12, 2, 8, 30, 1, 250e6, time.Local).UnixNano()},
		}
	})
	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "audit")
	require.Equal(t, ExitOK, code, stderr)
	stamp := time.Date(2026, 12, 2, 8, 30, 1, 250e6, time.Local).Format("2006-01-02T15:04:05.000Z07:00")
	assert.Equal(t, `seq=7 writer=oomd writerSeq=1 tick=4 killDecided subject=hog instance=1 bytes=16MiB limit=8MiB decision=1 trace=trace-1-000001.otr:4096
`+stamp+` seq=8 writer=oomd writerSeq=2 tick=5 memstatRejected subject=spoofer instance=2 reason=claimed=hog
`, stdout, "logd's append time first, when the entry has one")
	code, stdout, _ = oomctl(t, nil, "--socket", f.path, "audit", "--json", "--since", "7")
	require.Equal(t, ExitOK, code)
	assert.Equal(t, `{"seq":8,"writer":"oomd","writerSeq":2,"tick":5,"kind":"memstatRejected","subject":"spoofer","instance":2,"bytes":0,"limit":0,"decision":0,"reason":"claimed=hog",`+
		`"appendedAtNs":`+strconv.FormatInt(time.Date(2026, 12, 2, 8, 30, 1, 250e6, time.Local).UnixNano(), 10)+`,"tracePos":""}`+"\n", stdout)
	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "audit", "--limit", "1")
	assert.Equal(t, 1, strings.Count(stdout, "\n"))
}

// TestTimeout: a socket that accepts but never answers (oomd stopped, say with SIGSTOP)
// fails after --timeout with a message that says so.
func TestTimeout(t *testing.T) {
	sock := filepath.Join(testutil.SocketDir(t), "oomd.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c // held open and silent until the test ends
		}
	}()
	defer func() {
		l.Close()
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
	}()
	code, stdout, stderr := oomctl(t, nil, "--socket", sock, "--timeout", "200ms", "status")
	assert.Equal(t, ExitRuntime, code)
	assert.Empty(t, stdout)
	assert.True(t, strings.HasPrefix(stderr, "oomctl: oomd did not answer within 200ms (--timeout; is it stopped or overloaded?): "), stderr)
	assert.Contains(t, stderr, "context deadline exceeded")
}

func TestLastReboot(t *testing.T) {
	f := startFake(t)
	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "last-reboot")
	require.Equal(t, ExitOK, code, stderr)
	assert.Contains(t, stdout, "no reboot reason recorded")

	f.do(func() {
		f.reboot = wire.RebootRecord{Valid: true, Reason: oomdpb.RebootReason_oom, Graceful: false, TeardownMs: 1002, BootCount: 3,
			NotStopped: []string{"hog-stuck"}}
	})
	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "last-reboot")
	assert.Equal(t, "last reboot: reason=oom graceful=no teardown=1002 ms (written by boot 3)\nnot stopped in time: hog-stuck\n", stdout)
	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "--json", "last-reboot")
	assert.Equal(t, `{"valid":true,"reason":"oom","graceful":false,"teardownMs":1002,"notStopped":["hog-stuck"],"bootCount":3}`+"\n", stdout)
}

// TestEventsAcrossRestart: a --since from an earlier oomd run is told which numbers went
// with that run, apart from those this run's ring overwrote; each event carries the wall
// time oomd published it at, in RFC 3339 for people and raw with --json.
func TestEventsAcrossRestart(t *testing.T) {
	f := startFake(t)
	const at = int64(1_700_000_000_123_000_000)
	f.do(func() {
		// This run started above seq 1024; the ring already overwrote 1025 and 1026.
		f.status = wire.Status{EventSeqBase: 1024, StartedAtNs: at - 5e9}
		f.events = []policy.Event{
			{Seq: 1027, Tick: 4, Kind: policy.EventSoftExceeded, Subject: "hog", Bytes: 5 << 20, Limit: 4 << 20, WallTimeNs: at},
			{Seq: 1028, Tick: 9, Kind: policy.EventSoftCleared, Subject: "hog", Bytes: 1 << 20, Limit: 4 << 20},
		}
		f.dropped = 1026
	})
	code, stdout, stderr := oomctl(t, nil, "--socket", f.path, "events", "--since", "1000")
	require.Equal(t, ExitOK, code, stderr)
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	require.Len(t, lines, 3, stdout)
	assert.Equal(t, "missed=26 (oomd restarted: seqs 1001..1024 were its earlier runs' and went with them; "+
		"some of those numbers were never used; 2 more overwritten in oomd's event ring before they were read)", lines[0])
	stamp, rest, ok := strings.Cut(lines[1], " ")
	require.True(t, ok)
	when, err := time.Parse(time.RFC3339, stamp)
	require.NoError(t, err, "the wall time is RFC 3339")
	assert.Equal(t, at/1e6, when.UnixMilli())
	assert.Equal(t, "seq=1027 tick=4 softExceeded subject=hog bytes=5MiB limit=4MiB", rest)
	assert.Equal(t, "seq=1028 tick=9 softCleared subject=hog bytes=1MiB limit=4MiB", lines[2], "no wall time known: none printed")

	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "events", "--json", "--since", "1000", "--limit", "1")
	assert.Equal(t, `{"missed":26,"earlierRun":24}`+"\n"+`{"seq":1027,"tick":4,"kind":"softExceeded","subject":"hog","bytes":5242880,"limit":4194304,"decision":0,"reason":"","wallTimeNs":1700000000123000000}`+"\n", stdout)

	_, stdout, _ = oomctl(t, nil, "--socket", f.path, "status")
	assert.Contains(t, stdout, "this oomd run: started ")
	assert.Contains(t, stdout, " (tick 0), its events have seq > 1024\n")
}
