// Package e2e runs the real stack — execd, logd, oomd, hogs — as separate processes over
// real Unix sockets and checks the kill path from outside, through the same control API
// and markers a user sees. Binaries are built once in TestMain.
//
// With OOMD_E2E_RACE=1 the stack's own programs (raceBuilt) are race builds (make race
// does this): every child then runs with GORACE halt_on_error=1 exitcode=66, and a race
// report in any child's output, or a child exiting 66, fails the test that ran it.
package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/testutil"
)

var binDir string

// raceBuild is the OOMD_E2E_RACE=1 switch (see the package comment).
var raceBuild = os.Getenv("OOMD_E2E_RACE") == "1"

// raceBuilt are the programs built with -race under the switch: the stack and its CLI.
// The subjects (hogs, the selftest client, the hostile test children) stay normal
// builds: their memory is what the tests feed oomd, and a race build's shadow memory
// in their cgroups would cross the tests' limits on its own (a 3-member family hog
// reached 109 MiB against a 96 MiB hard limit before the selftest had injected a byte).
// Their code is under the race detector in make race's unit tests.
var raceBuilt = map[string]bool{"execd-stub": true, "logd-stub": true, "oomd": true, "oomctl": true}

// raceGORACE is added to the children's GORACE under the switch. halt_on_error and
// exitcode make a race fatal and recognisable; atexit_sleep_ms=0 drops the race
// runtime's default 1 s pause at exit, which made a stopped service miss its stop
// timeout (the system teardown tests count those).
var raceGORACE = fmt.Sprintf("halt_on_error=1 exitcode=%d atexit_sleep_ms=0", raceExitCode)

// raceRSS scales a bound on a race-built daemon's resident memory: the race runtime's
// shadow memory multiplies a Go process's RSS (the detector's documentation says by
// 5–10x at worst). 4x stays far below the growth those bounds exist to catch (900 MiB
// in ten seconds for the flood without rpcx's limits).
func raceRSS(kib uint64) uint64 {
	if raceBuild {
		return 4 * kib
	}
	return kib
}

const (
	raceReport   = "WARNING: DATA RACE"
	raceExitCode = 66
	// raceExited is execd's "exited" line for a child that halted on a race report.
	raceExited = `"status": "exit=66"`
)

// programs are built once, in TestMain; a binary is named after its package's
// directory, which is its key here.
var programs = map[string]string{
	"execd-stub":      "./services/execd-stub",
	"logd-stub":       "./services/logd-stub",
	"oomd":            "./services/oomd",
	"hog":             "./apps/hog",
	"selftest-client": "./apps/selftest-client",
	"oomctl":          "./apps/oomctl",
	"spoofer":         "./tests/progs/spoofer",
	"sessionleak":     "./tests/progs/sessionleak",
	"pagehostile":     "./tests/progs/pagehostile",
}

func TestMain(m *testing.M) {
	if raceBuild {
		// Inherited by every child (execd passes its environment on): the first race
		// ends the process, so a report cannot scroll by in a test that still passes.
		// The test binary read its own GORACE at start-up; this does not change it.
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" "+raceGORACE))
	}
	progs, err := buildPrograms()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = progs.Dir
	code := testutil.Run(m)
	progs.Remove()
	os.Exit(code)
}

// buildPrograms builds programs, the raceBuilt ones with -race under the switch.
func buildPrograms() (*testutil.Programs, error) {
	var plain, race []string
	for name, pkg := range programs {
		if path.Base(pkg) != name {
			return nil, fmt.Errorf("programs: %s is built as %s", pkg, path.Base(pkg))
		}
		if raceBuild && raceBuilt[name] {
			race = append(race, pkg)
		} else {
			plain = append(plain, pkg)
		}
	}
	progs, err := testutil.BuildPrograms(testutil.BuildOptions{}, plain...)
	if err != nil {
		return nil, err
	}
	if err := progs.Build(testutil.BuildOptions{Flags: []string{"-race"}}, race...); err != nil {
		progs.Remove()
		return nil, err
	}
	return progs, nil
}

// stack is one running execd with its children.
type stack struct {
	t     *testing.T
	rt    string
	cmd   *exec.Cmd
	lines *lines
	done  chan struct{}
	err   error
}

// startStack writes manifest (with ${BIN} replaced by the built binaries' directory)
// and starts execd on it.
func startStack(t *testing.T, manifest string, files map[string]string) *stack {
	t.Helper()
	return startStackArgs(t, manifest, files)
}

// startStackArgs is startStack with more execd arguments.
func startStackArgs(t *testing.T, manifest string, files map[string]string, args ...string) *stack {
	t.Helper()
	rt := t.TempDir()
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(rt, name), []byte(body), 0o600))
	}
	mpath := filepath.Join(rt, "manifest.json")
	require.NoError(t, os.WriteFile(mpath, []byte(strings.ReplaceAll(manifest, "${BIN}", binDir)), 0o600))
	cmd := exec.Command(filepath.Join(binDir, "execd-stub"), append([]string{"--manifest", mpath, "--runtime-dir", rt}, args...)...)
	s := &stack{t: t, rt: rt, cmd: cmd, lines: newLines(), done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.Env = append(os.Environ(), "LOG_LEVEL=debug")
	require.NoError(t, cmd.Start())
	go s.lines.read(pr, t)
	go func() {
		s.err = cmd.Wait()
		pw.Close()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-s.done
			}
		}
		if n := s.lines.count(raceReport); n > 0 {
			t.Errorf("the stack's console holds %d data race report(s)", n)
		}
		if n := s.lines.count(raceExited); n > 0 {
			t.Errorf("%d child(ren) exited %d: the race detector's exit code", n, raceExitCode)
		}
		if ee := (*exec.ExitError)(nil); errors.As(s.err, &ee) && ee.ExitCode() == raceExitCode {
			t.Errorf("execd exited %d: the race detector's exit code", raceExitCode)
		}
		if t.Failed() {
			t.Logf("console of the failed stack:\n%s", s.lines.dump())
		}
	})
	return s
}

// stop sends SIGTERM to execd and waits for it to exit.
func (s *stack) stop(timeout time.Duration) error {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.err
	case <-time.After(timeout):
		return fmt.Errorf("execd did not exit within %v of SIGTERM", timeout)
	}
}

// wait waits for execd to exit on its own.
func (s *stack) wait(timeout time.Duration) error {
	select {
	case <-s.done:
		return s.err
	case <-time.After(timeout):
		return fmt.Errorf("execd still running after %v", timeout)
	}
}

func (s *stack) waitLine(substr string, timeout time.Duration) string {
	s.t.Helper()
	l, err := s.lines.wait(substr, timeout)
	require.NoError(s.t, err)
	return l
}

func (s *stack) path(name string) string { return filepath.Join(s.rt, name) }

// checkNoRace fails t if out, what a program printed, holds a race detector report.
func checkNoRace(t *testing.T, what, out string) {
	t.Helper()
	if strings.Contains(out, raceReport) {
		t.Errorf("%s reported a data race:\n%s", what, out)
	}
}

// syncBuffer is a bytes.Buffer safe to read while an exec.Cmd writes into it: os/exec
// copies a non-*os.File Stdout or Stderr from its own goroutine until Wait returns.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines collects a process's output and lets tests wait for a line.
type lines struct {
	mu   sync.Mutex
	all  []string
	wake chan struct{}
	eof  bool
}

func newLines() *lines { return &lines{wake: make(chan struct{})} }

func (l *lines) read(r io.Reader, t *testing.T) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.all = append(l.all, sc.Text())
		close(l.wake)
		l.wake = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.eof = true
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
}

// wait returns the first line (from the start) containing substr.
func (l *lines) wait(substr string, timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		for _, s := range l.all {
			if strings.Contains(s, substr) {
				l.mu.Unlock()
				return s, nil
			}
		}
		eof, wake := l.eof, l.wake
		l.mu.Unlock()
		if eof {
			return "", fmt.Errorf("output ended without a line containing %q", substr)
		}
		select {
		case <-wake:
		case <-deadline:
			return "", fmt.Errorf("no line containing %q within %v", substr, timeout)
		}
	}
}

// index returns the position of the first line containing substr, or -1.
func (l *lines) index(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, s := range l.all {
		if strings.Contains(s, substr) {
			return i
		}
	}
	return -1
}

func (l *lines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.all {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

func (l *lines) dump() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// waitCount waits until at least n lines contain substr (e.g. the second "oomd: ready"
// after a restart) and returns the n-th.
func (s *stack) waitCount(substr string, n int, timeout time.Duration) string {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		l := s.lines
		l.mu.Lock()
		seen := 0
		for _, line := range l.all {
			if strings.Contains(line, substr) {
				if seen++; seen == n {
					l.mu.Unlock()
					return line
				}
			}
		}
		eof, wake := l.eof, l.wake
		l.mu.Unlock()
		if eof {
			s.t.Fatalf("output ended with %d of %d lines containing %q", seen, n, substr)
		}
		select {
		case <-wake:
		case <-deadline:
			s.t.Fatalf("%d of %d lines containing %q within %v", seen, n, substr, timeout)
		}
	}
}
