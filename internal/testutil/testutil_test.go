package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
)

// envLeakChild makes TestLeakChild, in a re-executed test binary, create a client and
// release it ("release") or leak it (any other mode); "reportonly" and "otherknown"
// declare a known leak that is, or is not, this one.
const envLeakChild = "OOMD_TESTUTIL_LEAK_CHILD"

func TestMain(m *testing.M) {
	var opts []Option
	switch os.Getenv(envLeakChild) {
	case "reportonly":
		opts = append(opts, LeaksReportOnly("testutil's own test of the mode", "testutil.TestLeakChild"))
	case "otherknown":
		opts = append(opts, LeaksReportOnly("a leak elsewhere", "testutil.NoSuchSite"))
	}
	Main(m, opts...)
}

type nopSession struct{}

func (nopSession) Whoami(context.Context, oomdpb.Session_whoami) error           { return nil }
func (nopSession) Grants(context.Context, oomdpb.Session_grants) error           { return nil }
func (nopSession) Ready(context.Context, oomdpb.Session_ready) error             { return nil }
func (nopSession) WatchReboot(context.Context, oomdpb.Session_watchReboot) error { return nil }

// TestLeakChild is the child's side of TestLeakCheck.
func TestLeakChild(t *testing.T) {
	mode := os.Getenv(envLeakChild)
	if mode == "" {
		t.Skip("run by TestLeakCheck in a child process")
	}
	c := capnp.Client(oomdpb.Session_ServerToClient(nopSession{}))
	if mode == "release" {
		c.Release()
	}
}

// TestLeakCheck: a test binary whose tests pass but leak a client exits non-zero and
// names where the client was made; released, it passes quietly; a known leak is named
// and passes, and declaring another leak known does not hide this one.
func TestLeakCheck(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		wantCode int
		wantLeak bool
	}{
		{mode: "leak", wantCode: 1, wantLeak: true},
		{mode: "release", wantCode: 0},
		{mode: "reportonly", wantCode: 0, wantLeak: true},
		{mode: "otherknown", wantCode: 1, wantLeak: true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestLeakChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), envLeakChild+"="+tc.mode)
			out, err := cmd.CombinedOutput()
			code := 0
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				code = ee.ExitCode()
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.wantCode, code, "exit code; output:\n%s", out)
			if tc.wantLeak {
				assert.Contains(t, string(out), "capnp client leak check: 1 client(s) garbage collected without Release")
				assert.Contains(t, string(out), "testutil.TestLeakChild", "the report names where the client was made")
			} else {
				assert.NotContains(t, string(out), "leak check")
			}
			if tc.mode == "reportonly" {
				assert.Contains(t, string(out), "capnp client leak check: report only (testutil's own test of the mode):\n"+
					"capnp client leak check: 1 client(s)")
			} else {
				assert.NotContains(t, string(out), "report only")
			}
		})
	}
}

func TestNormalizeStackGroupsOneSite(t *testing.T) {
	a := "leaked client created at:\n\ngoroutine 7 [running]:\npkg.f(0xc000012345, 0x1)\n\t/x/f.go:10 +0x1d\ncreated by pkg.g in goroutine 1\n\t/x/g.go:3 +0x2a\n"
	b := strings.NewReplacer("goroutine 7", "goroutine 9", "0xc000012345", "0xc000099999", "goroutine 1", "goroutine 4").Replace(a)
	assert.Equal(t, normalizeStack(a), normalizeStack(b))
	assert.Contains(t, leakReport([]string{a, b}), "--- 2 x leaked client created at:\npkg.f(...)\n\t/x/f.go:10 +0x1d\ncreated by pkg.g\n")
	own := "leaked client created at:\n\ngoroutine 7 [running]:\nx/testutil.Run.SetClientLeakFunc.func1(...)\n\t/capnp/capability.go:843 +0x4c\npkg.f()\n\t/x/f.go:10 +0x1d\n"
	assert.Equal(t, "leaked client created at:\npkg.f(...)\n\t/x/f.go:10 +0x1d", normalizeStack(own), "capnp's own frame is dropped")
}

// fakeTB records Eventually's failure instead of ending the test.
type fakeTB struct {
	testing.TB
	failure string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failure = fmt.Sprintf(format, args...)
}

func TestEventually(t *testing.T) {
	t.Run("returns what it observed when done", func(t *testing.T) {
		n := 0
		got := Eventually(t, 10*time.Second, func() (int, bool) { n++; return n, n == 3 }, "three")
		assert.Equal(t, 3, got)
	})
	t.Run("the failure names the last observation", func(t *testing.T) {
		f := &fakeTB{}
		n := 0
		got := Eventually(f, 20*time.Millisecond, func() ([]int, bool) { n++; return []int{n}, false }, "pids of %s", "app")
		assert.Equal(t, []int{n}, got)
		assert.Equal(t, fmt.Sprintf("timed out after 20ms waiting for pids of app; last observed: [%d]", n), f.failure)
	})
}

func TestSocketDir(t *testing.T) {
	t.Setenv("TMPDIR", "/tmp/"+strings.Repeat("x", 80))
	long := SocketDir(t)
	assert.True(t, strings.HasPrefix(long, "/tmp/oomd"), "a long TMPDIR is not used: %s", long)

	t.Setenv("TMPDIR", "")
	dir := SocketDir(t)
	assert.LessOrEqual(t, len(dir), maxSocketDir)
	name := filepath.Join(dir, strings.Repeat("s", 107-maxSocketDir-1))
	l, err := net.Listen("unix", name)
	require.NoError(t, err, "a socket with a %d-byte path", len(name))
	l.Close()
}

func TestBuildPrograms(t *testing.T) {
	p, err := BuildPrograms(BuildOptions{Env: []string{"CGO_ENABLED=0"}}, "./tests/progs/sessionleak")
	require.NoError(t, err)
	t.Cleanup(p.Remove)
	fi, err := os.Stat(p.Path("sessionleak"))
	require.NoError(t, err)
	assert.NotZero(t, fi.Mode()&0o111, "executable")

	_, err = BuildPrograms(BuildOptions{}, "./tests/progs/no-such-program")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "go build -o ")
	assert.Contains(t, err.Error(), "no-such-program", "go build's output is in the error")
}
