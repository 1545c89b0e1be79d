package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

// runOomctl runs the built oomctl binary against the stack's socket and returns its
// exit code and output.
func runOomctl(t *testing.T, ctx context.Context, s *stack, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "oomctl"), args...)
	cmd.Env = append(os.Environ(), "OOMD_SOCKET="+s.path("oomd.sock"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	checkNoRace(t, fmt.Sprintf("oomctl %q", args), errb.String())
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run oomctl %q: %v", args, err)
	}
	return code, out.String(), errb.String()
}

// TestOomctl drives the real oomctl binary against a running stack: status, policy
// set/get, a refused policy, events --follow seeing a kill as it happens, and audit.
func TestOomctl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startStack(t, manifest(fmt.Sprintf(hogEntry, "", 1000)), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)

	// status: a table row for the hog, and the same in --json.
	code, stdout, stderr := runOomctl(t, ctx, s, "status")
	require.Equal(t, 0, code, "status: %s", stderr)
	assert.Contains(t, stdout, "SUBJECT  STATE")
	row := tableRow(stdout, "hog")
	require.NotNil(t, row, "status has no row for the hog:\n%s", stdout)
	assert.Equal(t, []string{"hog", "normal"}, row[:2])
	assert.Equal(t, "no", row[len(row)-2], "hog is not critical")
	logd := tableRow(stdout, "logd")
	require.NotNil(t, logd, "status has no row for logd:\n%s", stdout)
	assert.Equal(t, "yes", logd[len(logd)-2], "logd is critical")

	code, stdout, stderr = runOomctl(t, ctx, s, "status", "--json")
	require.Equal(t, 0, code, stderr)
	var st struct {
		InjectEnabled bool `json:"injectEnabled"`
		Subjects      []struct {
			Subject   string `json:"subject"`
			State     string `json:"state"`
			HardBytes uint64 `json:"hardBytes"`
		} `json:"subjects"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &st), stdout)
	assert.True(t, st.InjectEnabled)
	var hogHard uint64
	for _, sub := range st.Subjects {
		if sub.Subject == "hog" {
			hogHard = sub.HardBytes
		}
	}
	assert.Equal(t, uint64(8<<20), hogHard, "the policy file's hardBytes")

	// policy set with a flag, over the policy in force; policy get --json shows it.
	code, stdout, stderr = runOomctl(t, ctx, s, "policy", "set", "--hard-bytes", "12M", "--socket", s.path("oomd.sock"))
	require.Equal(t, 0, code, "policy set: %s", stderr)
	assert.Regexp(t, `^policy version \d+ in force\n$`, stdout)
	code, stdout, stderr = runOomctl(t, ctx, s, "--json", "policy", "get")
	require.Equal(t, 0, code, stderr)
	var pv struct {
		Version uint64 `json:"version"`
		Policy  struct {
			SoftBytes, HardBytes uint64
			SampleMs             uint32
		} `json:"policy"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &pv), stdout)
	assert.Equal(t, uint64(12<<20), pv.Policy.HardBytes)
	assert.Equal(t, uint64(4<<20), pv.Policy.SoftBytes, "fields not given keep their value")
	assert.Equal(t, uint32(10), pv.Policy.SampleMs, "fields not given keep their value")
	assert.GreaterOrEqual(t, pv.Version, uint64(2))

	// A policy oomd refuses: exit 2, oomd's error naming the field and the bound, and
	// the policy in force is unchanged.
	code, stdout, stderr = runOomctl(t, ctx, s, "policy", "set", "--hard-bytes", "1M")
	assert.Equal(t, 2, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, "oomctl: oomd refused the policy and keeps the one in force: invalid policy: hardBytes = 1048576: must be >= softBytes (4194304)")
	code, stdout, _ = runOomctl(t, ctx, s, "--json", "policy", "get")
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, fmt.Sprintf(`"version":%d,`, pv.Version))
	assert.Contains(t, stdout, `"hardBytes":12582912`)

	// events --follow, started before the inject, sees the kill as it happens.
	follow := exec.CommandContext(ctx, filepath.Join(binDir, "oomctl"), "events", "--follow", "--json", "--socket", s.path("oomd.sock"))
	// os/exec copies the child's stderr into followErr from its own goroutine until
	// Wait returns, and the failure messages below read it while the child runs.
	var followErr syncBuffer
	follow.Stderr = &followErr
	out, err := follow.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, follow.Start())
	followDone := make(chan error, 1)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		followDone <- follow.Wait()
	}()
	t.Cleanup(func() { follow.Process.Kill() })
	type ev struct {
		Seq      uint64 `json:"seq"`
		Kind     string `json:"kind"`
		Subject  string `json:"subject"`
		Bytes    uint64 `json:"bytes"`
		Decision uint64 `json:"decision"`
	}
	// waitLine reads follow's output until an event matches, with a deadline.
	waitLine := func(kind, subject string) ev {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("events --follow ended early; stderr: %s", followErr.String())
				}
				var e ev
				require.NoError(t, json.Unmarshal([]byte(l), &e), "not a JSON line: %q", l)
				if e.Kind == kind && e.Subject == subject {
					return e
				}
			case <-deadline:
				t.Fatalf("events --follow printed no %s event for %s within 20s; stderr: %s", kind, subject, followErr.String())
			}
		}
	}
	// The history comes first: once the hog's registration is printed, oomctl is
	// subscribed, so what follows the inject can only arrive live.
	waitLine("subjectRegistered", "hog")
	for _, e := range c.Events() {
		require.NotEqual(t, "killed", e.Kind.String(), "the hog was killed before the inject")
	}
	injectToKill(t, ctx, c, "hog", 16<<20)
	killed := waitLine("killed", "hog")
	assert.Greater(t, killed.Bytes, uint64(12<<20))
	assert.NotZero(t, killed.Decision)
	require.NoError(t, follow.Process.Signal(syscall.SIGTERM))
	// Drain what it prints until it exits: the reader only reaches Wait at EOF, and an
	// event after the kill would otherwise block it on the unread channel.
	exitDeadline := time.After(10 * time.Second)
	pending := lines
	for exited := false; !exited; {
		select {
		case _, ok := <-pending:
			if !ok {
				pending = nil
			}
		case err := <-followDone:
			assert.NoError(t, err, "events --follow must exit 0 on SIGTERM; stderr: %s", followErr.String())
			checkNoRace(t, "oomctl events --follow", followErr.String())
			exited = true
		case <-exitDeadline:
			t.Fatal("events --follow did not exit after SIGTERM")
		}
	}

	// events (history, text form) shows the kill too.
	code, stdout, stderr = runOomctl(t, ctx, s, "events", "--since", fmt.Sprint(killed.Seq-1), "--limit", "1")
	require.Equal(t, 0, code, stderr)
	// "<wall time> seq=<n> tick=<n> killed ..." (the wall time is oomd's stamp)
	assert.Contains(t, strings.Fields(stdout), fmt.Sprintf("seq=%d", killed.Seq))
	assert.Contains(t, stdout, " killed subject=hog ")

	// audit lists the kill decision's durable record.
	code, stdout, stderr = runOomctl(t, ctx, s, "audit")
	require.Equal(t, 0, code, "audit: %s", stderr)
	// "<logd's append time> seq=... killDecided ..." in human units (raw with --json).
	assert.Contains(t, stdout, fmt.Sprintf("killDecided subject=hog instance=1 bytes=%s limit=12MiB decision=%d", policy.CompactBytes(killed.Bytes), killed.Decision))
	assert.Regexp(t, `(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\S* seq=\d+ writer=oomd .*killDecided subject=hog`, stdout)
	code, stdout, stderr = runOomctl(t, ctx, s, "audit", "--json")
	require.Equal(t, 0, code, stderr)
	found := false
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var a struct {
			Writer, Kind, Subject string
			Decision              uint64
		}
		require.NoError(t, json.Unmarshal([]byte(l), &a), l)
		if a.Kind == "killDecided" && a.Subject == "hog" && a.Decision == killed.Decision {
			found = true
			assert.NotEmpty(t, a.Writer)
		}
	}
	assert.True(t, found, "audit --json has no killDecided record for the hog:\n%s", stdout)

	// A wrong socket: the clear message, exit 1.
	missing := s.path("nope.sock")
	code, _, stderr = runOomctl(t, ctx, s, "status", "--socket", missing)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "oomctl: oomd is not running: no socket at "+missing+" (is the stack up? set --socket or OOMD_SOCKET)")

	require.NoError(t, s.stop(20*time.Second))
}

// tableRow returns the whitespace-separated fields of the table row for subject.
func tableRow(table, subject string) []string {
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == subject {
			return f
		}
	}
	return nil
}
