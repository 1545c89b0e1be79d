package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/testutil"
)

// Binaries built once for the whole package (with -race when the tests are).
var execdBin, childBin string

func TestMain(m *testing.M) {
	progs, err := testutil.BuildPrograms(testutil.Race(), "./services/execd-stub", "./tests/progs/testchild")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	execdBin, childBin = progs.Path("execd-stub"), progs.Path("testchild")
	code := testutil.Run(m)
	progs.Remove()
	os.Exit(code)
}

// deadline bounds every wait in these tests; it is a failure bound, not a timing
// assertion.
const deadline = 20 * time.Second

// svc is one manifest entry; the test child's argv is built from the fields.
type svc struct {
	ID            string            `json:"id"`
	Argv          []string          `json:"argv"`
	Critical      bool              `json:"critical,omitempty"`
	DependsOn     []string          `json:"dependsOn,omitempty"`
	StopTimeoutMs int               `json:"stopTimeoutMs,omitempty"`
	Restart       string            `json:"restart,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Role          string            `json:"role,omitempty"`
	Injectable    bool              `json:"injectable,omitempty"`
	ExitWith      bool              `json:"exitWith,omitempty"`
}

// child returns a service running the test child with the given flags, logging its
// events to the shared events file.
func child(id string, flags ...string) svc {
	argv := append([]string{childBin, "--name", id, "--log", "${RUNTIME_DIR}/events.log"}, flags...)
	return svc{ID: id, Argv: argv}
}

// watchdog is a test child that takes the watchdog's grants and hands them to the test
// (see harness.term, harness.system and harness.handoffs).
func watchdog(flags ...string) svc {
	s := child("wd", append([]string{"--ready", "--proxy-term", "${RUNTIME_DIR}/term.sock",
		"--proxy-system", "${RUNTIME_DIR}/system.sock", "--proxy-handoffs", "${RUNTIME_DIR}/handoffs.sock"}, flags...)...)
	s.Role, s.Critical = "watchdog", true
	return s
}

type harness struct {
	t      testing.TB
	dir    string
	cmd    *exec.Cmd
	out    *syncBuffer
	waited chan struct{}
	err    error // execd's exit, valid after waited is closed

	// Set when the manifest has a watchdog(); acceptWatchdog replaces term and system
	// with the next watchdog instance's.
	termLn, sysLn, handLn *net.UnixListener
	term                  oomdpb.Terminator
	system                oomdpb.SystemControl
	handoffs              chan receivedHandoff
}

type receivedHandoff struct {
	subject    string
	instance   uint64
	pid        int32
	critical   bool
	injectable bool
	conn       net.Conn
	mode       oomdpb.CgroupMode
	usage      []byte // what the usage fd read at the handoff (nil: none passed)
	hasPage    bool
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// start writes the manifest, listens for the watchdog proxy if there is one, and starts
// execd. extra files are passed to execd as fds 3, 4, ... without close-on-exec.
func start(t testing.TB, services []svc, extra ...*os.File) *harness {
	t.Helper()
	return startWithArgs(t, services, nil, extra...)
}

// startWithArgs is start with more execd command-line arguments.
func startWithArgs(t testing.TB, services []svc, args []string, extra ...*os.File) *harness {
	t.Helper()
	dir := testutil.SocketDir(t)
	h := &harness{t: t, dir: dir, out: &syncBuffer{}, waited: make(chan struct{})}
	rt := filepath.Join(dir, "rt")

	b, err := json.MarshalIndent(map[string]any{"services": services}, "", "  ")
	require.NoError(t, err)
	manifest := filepath.Join(dir, "manifest.json")
	require.NoError(t, os.WriteFile(manifest, b, 0o600))

	hasWatchdog := false
	for _, s := range services {
		hasWatchdog = hasWatchdog || s.Role == "watchdog"
	}
	if hasWatchdog {
		var termLn, sysLn, handLn *net.UnixListener
		require.NoError(t, os.MkdirAll(rt, 0o700))
		termLn, err = net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(rt, "term.sock"), Net: "unix"})
		require.NoError(t, err)
		sysLn, err = net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(rt, "system.sock"), Net: "unix"})
		require.NoError(t, err)
		handLn, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: filepath.Join(rt, "handoffs.sock"), Net: "unixpacket"})
		require.NoError(t, err)
		t.Cleanup(func() { termLn.Close(); sysLn.Close(); handLn.Close() })
		h.termLn, h.sysLn, h.handLn = termLn, sysLn, handLn
		h.handoffs = make(chan receivedHandoff, 64)
	}

	h.cmd = exec.Command(execdBin, append([]string{"--manifest", manifest, "--runtime-dir", rt, "--debug"}, args...)...)
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	// Race-enabled binaries otherwise sleep 1 s at exit; children inherit this.
	h.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0 halt_on_error=1")
	h.cmd.ExtraFiles = extra
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, h.cmd.Start())
	go func() { h.err = h.cmd.Wait(); close(h.waited) }()
	t.Cleanup(func() {
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.waited:
		case <-time.After(deadline):
			h.cmd.Process.Kill()
			<-h.waited
		}
		if t.Failed() || os.Getenv("EXECD_TEST_OUTPUT") != "" {
			t.Logf("execd output:\n%s", h.out.String())
		}
	})
	if hasWatchdog {
		h.acceptWatchdog()
	}
	return h
}

// acceptWatchdog takes the connections of the next watchdog instance's proxy.
func (h *harness) acceptWatchdog() {
	t := h.t
	termLn, handLn := h.termLn, h.handLn
	termLn.SetDeadline(time.Now().Add(deadline))
	c, err := termLn.Accept()
	require.NoError(t, err, "the watchdog child did not dial the terminator socket")
	conn := rpcx.NewConn(c, capnp.Client{}, rpcLogger(t))
	t.Cleanup(func() { closeConn(conn) })
	term := oomdpb.Terminator(conn.Bootstrap(context.Background()))
	h.term = term
	t.Cleanup(term.Release)

	h.sysLn.SetDeadline(time.Now().Add(deadline))
	sc, err := h.sysLn.Accept()
	require.NoError(t, err, "the watchdog child did not dial the system socket")
	sysConn := rpcx.NewConn(sc, capnp.Client{}, rpcLogger(t))
	t.Cleanup(func() { closeConn(sysConn) })
	system := oomdpb.SystemControl(sysConn.Bootstrap(context.Background()))
	h.system = system
	t.Cleanup(system.Release)

	handLn.SetDeadline(time.Now().Add(deadline))
	hc, err := handLn.AcceptUnix()
	require.NoError(t, err, "the watchdog child did not dial the handoff socket")
	t.Cleanup(func() { hc.Close() })
	go func() {
		for {
			msg, files, err := rpcx.RecvMsgFDs(hc)
			if err != nil {
				return
			}
			ho, err := oomdpb.ReadRootSubjectHandoff(msg)
			if err != nil {
				for _, f := range files {
					f.Close()
				}
				continue
			}
			subject, _ := ho.Subject()
			r := receivedHandoff{subject: subject, instance: ho.Instance(), pid: ho.Pid(), critical: ho.Critical(),
				injectable: ho.Injectable(), mode: ho.CgroupMode()}
			kinds, _ := ho.Fds()
			for i, f := range files {
				k := oomdpb.HandoffFd_memstatSocket
				if i < kinds.Len() {
					k = kinds.At(i)
				}
				switch k {
				case oomdpb.HandoffFd_memstatSocket:
					r.conn, _ = rpcx.FileToConn(f)
				case oomdpb.HandoffFd_usage:
					buf := make([]byte, 64)
					n, _ := f.ReadAt(buf, 0)
					r.usage = buf[:max(n, 0)]
					f.Close()
				case oomdpb.HandoffFd_page:
					r.hasPage = true
					f.Close()
				default:
					f.Close()
				}
			}
			if r.conn == nil {
				continue
			}
			h.handoffs <- r
		}
	}()
}

// rpcLogger logs the test's side of the watchdog proxy; a benchmark prints every line
// it gets, so it gets warnings only.
func rpcLogger(t testing.TB) *zap.Logger {
	var opts []zaptest.LoggerOption
	if _, bench := t.(*testing.B); bench {
		opts = append(opts, zaptest.Level(zap.WarnLevel))
	}
	return zaptest.NewLogger(t, opts...).Named("test-rpc")
}

func closeConn(c *rpc.Conn) {
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// stop sends SIGTERM and returns execd's exit code.
func (h *harness) stop() int {
	h.t.Helper()
	require.NoError(h.t, h.cmd.Process.Signal(syscall.SIGTERM))
	return h.exitCode()
}

func (h *harness) exitCode() int {
	h.t.Helper()
	select {
	case <-h.waited:
	case <-time.After(deadline):
		h.t.Fatalf("execd did not exit within %v", deadline)
	}
	var ee *exec.ExitError
	if errors.As(h.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(h.t, h.err)
	return 0
}

func (h *harness) path(name string) string { return filepath.Join(h.dir, "rt", name) }

// events returns the lines children appended to events.log.
func (h *harness) events() []string {
	b, err := os.ReadFile(h.path("events.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(h.t, err)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// waitFor polls cond until it holds or the deadline passes: the event is observable
// only through the file system or /proc. It fails at once if execd exits first.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	testutil.Eventually(h.t, deadline, func() (string, bool) {
		exited := false
		select {
		case <-h.waited:
			exited = true
		default:
		}
		if cond() {
			return "", true
		}
		if exited {
			h.t.Fatalf("execd exited (%v) while waiting for %s", h.err, what)
		}
		return "false, execd running", false
	}, what)
}

func (h *harness) waitEvent(ev string) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("event %q", ev), func() bool { return index(h.events(), ev) >= 0 })
}

func index(lines []string, s string) int {
	for i, l := range lines {
		if l == s {
			return i
		}
	}
	return -1
}

// exitWatcher collects exit reports.
type exitWatcher struct{ ch chan report }

type report struct {
	Subject            string
	Instance           uint64
	Pid                int32
	ExitCode, Signal   int32
	Killed, Terminated bool
}

func (w *exitWatcher) Exited(_ context.Context, call oomdpb.ExitWatcher_exited) error {
	r, err := call.Args().Report()
	if err != nil {
		return err
	}
	subject, _ := r.Subject()
	w.ch <- report{subject, r.Instance(), r.Pid(), r.ExitCode(), r.Signal(), r.Killed(), r.Terminated()}
	return nil
}

func (h *harness) watchExits() *exits {
	h.t.Helper()
	w := &exitWatcher{ch: make(chan report, 256)}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	f, rel := h.term.WatchExits(ctx, func(p oomdpb.Terminator_watchExits_Params) error {
		return p.SetWatcher(oomdpb.ExitWatcher_ServerToClient(w))
	})
	defer rel()
	_, err := f.Struct()
	require.NoError(h.t, err)
	return &exits{ch: w.ch}
}

// exits hands out reports per subject; reports of other subjects wait their turn.
type exits struct {
	ch      chan report
	pending []report
}

func nextExit(t *testing.T, e *exits, subject string) report {
	t.Helper()
	timeout := time.After(deadline)
	for {
		for i, r := range e.pending {
			if r.Subject == subject {
				e.pending = append(e.pending[:i], e.pending[i+1:]...)
				return r
			}
		}
		select {
		case r := <-e.ch:
			e.pending = append(e.pending, r)
		case <-timeout:
			t.Fatalf("no exit report for %s within %v", subject, deadline)
		}
	}
}

func (h *harness) nextHandoff() receivedHandoff {
	h.t.Helper()
	select {
	case ho := <-h.handoffs:
		h.t.Cleanup(func() { ho.conn.Close() })
		return ho
	case <-time.After(deadline):
		h.t.Fatalf("no handoff within %v", deadline)
		return receivedHandoff{}
	}
}

type terminateResult struct {
	refusal oomdpb.Refusal
	detail  string
	pid     int32
}

func (h *harness) terminate(subject string, instance uint64) terminateResult {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	f, rel := h.term.Terminate(ctx, func(p oomdpb.Terminator_terminate_Params) error {
		p.SetInstance(instance)
		p.SetDecision(1)
		if err := p.SetReason("test"); err != nil {
			return err
		}
		return p.SetSubject(subject)
	})
	defer rel()
	res, err := f.Struct()
	require.NoError(h.t, err)
	detail, _ := res.Detail()
	return terminateResult{res.Refusal(), detail, res.Pid()}
}

// ---------------------------------------------------------------------------------------

func TestStartOrderFollowsReadinessAndStopIsReversed(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	require.NoError(t, unix.Mkfifo(gate, 0o600))

	h := start(t, []svc{
		withDeps(child("c"), "b"),
		withDeps(child("b", "--ready"), "a"),
		child("a", "--ready", "--gate", gate),
		child("d"),
	})
	h.waitEvent("start a")
	assert.Equal(t, -1, index(h.events(), "start b"), "b must wait until a is ready")

	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = g.Write([]byte{1})
	require.NoError(t, err)
	g.Close()
	h.waitEvent("start d")
	h.waitEvent("start c")

	// Children write their lines concurrently: only causal order shows in the file.
	ev := h.events()
	assert.Less(t, index(ev, "ready a"), index(ev, "start b"), "b starts after a is ready: %v", ev)
	assert.Less(t, index(ev, "ready b"), index(ev, "start c"), "c starts after b is ready: %v", ev)
	assert.Equal(t, []string{"a", "b", "c", "d"}, h.spawnOrder(), "execd spawns dependencies first, ties in manifest order")

	assert.Equal(t, 0, h.stop(), "execd exits 0 after SIGTERM")
	var stops []string
	for _, l := range h.events() {
		if strings.HasPrefix(l, "sigterm ") {
			stops = append(stops, l)
		}
	}
	assert.Equal(t, []string{"sigterm d", "sigterm c", "sigterm b", "sigterm a"}, stops, "stop order is the reverse of start order")
}

// spawnOrder is the order of execd's "started" log lines.
func (h *harness) spawnOrder() []string {
	var ids []string
	for _, l := range strings.Split(h.out.String(), "\n") {
		if _, rest, ok := strings.Cut(l, "\tstarted\t{\"subject\": \""); ok {
			id, _, _ := strings.Cut(rest, "\"")
			ids = append(ids, id)
		}
	}
	return ids
}

func withDeps(s svc, deps ...string) svc {
	s.DependsOn = deps
	return s
}

func TestDependencyExitingBeforeReadyFailsStartup(t *testing.T) {
	h := start(t, []svc{
		child("a", "--exit", "2"),
		withDeps(child("b"), "a"),
	})
	assert.Equal(t, 1, h.exitCode())
	assert.Contains(t, h.out.String(), "dependency a exited before it was ready (exit=2)")
	assert.Equal(t, -1, index(h.events(), "start b"))
}

func TestBadManifestExitsNonZeroWithPosition(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.json")
	require.NoError(t, os.WriteFile(path, []byte("{\"services\": [\n {\"id\": \"a\", \"arg\": []}]}"), 0o600))
	out, err := exec.Command(execdBin, "--manifest", path, "--runtime-dir", filepath.Join(dir, "rt")).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode())
	assert.Contains(t, string(out), `unknown field \"arg\" in services[0] at 2:14`)
}

func TestEarlyExitIsReported(t *testing.T) {
	// "quick" starts before the watchdog and exits at once: its report waits in the
	// backlog until the watcher registers.
	h := start(t, []svc{
		child("quick", "--exit", "3"),
		watchdog(),
		withDeps(child("late", "--exit", "4"), "wd"),
	})
	exits := h.watchExits()
	r := nextExit(t, exits, "quick")
	assert.Equal(t, report{Subject: "quick", Instance: 1, Pid: r.Pid, ExitCode: 3}, r)
	assert.NotZero(t, r.Pid)
	r = nextExit(t, exits, "late")
	assert.Equal(t, int32(4), r.ExitCode)
	assert.Equal(t, 0, h.stop())
}

func TestTerminate(t *testing.T) {
	victim := withDeps(child("victim"), "wd")
	victim.Restart = "always" // terminate is a kill: never restarted
	stubborn := withDeps(child("stubborn", "--ignore-term"), "wd")
	stubborn.StopTimeoutMs = 200
	crit := withDeps(child("crit"), "wd")
	crit.Critical = true
	h := start(t, []svc{watchdog(), victim, stubborn, crit})
	exits := h.watchExits()
	pids := map[string]int32{}
	for range 3 {
		ho := h.nextHandoff()
		pids[ho.subject] = ho.pid
	}
	// Children handle SIGTERM from the moment they log "start".
	for _, id := range []string{"victim", "stubborn", "crit"} {
		h.waitEvent("start " + id)
	}

	t.Run("graceful", func(t *testing.T) {
		res := h.terminate("victim", 1)
		assert.Equal(t, oomdpb.Refusal_none, res.refusal, res.detail)
		assert.Equal(t, pids["victim"], res.pid)
		r := nextExit(t, exits, "victim")
		assert.Equal(t, report{Subject: "victim", Instance: 1, Pid: pids["victim"], Terminated: true}, r)
		h.waitEvent("sigterm victim")
		res = h.terminate("victim", 1)
		assert.Equal(t, oomdpb.Refusal_notRunning, res.refusal, "terminate after exit")
	})
	t.Run("killed after stop timeout", func(t *testing.T) {
		res := h.terminate("stubborn", 1)
		require.Equal(t, oomdpb.Refusal_none, res.refusal, res.detail)
		r := nextExit(t, exits, "stubborn")
		assert.Equal(t, report{Subject: "stubborn", Instance: 1, Pid: pids["stubborn"],
			Signal: int32(syscall.SIGKILL), Killed: true, Terminated: true}, r)
	})
	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			subject  string
			instance uint64
			want     oomdpb.Refusal
			detail   string
		}{
			{"crit", 1, oomdpb.Refusal_critical, "critical"},
			{"wd", 1, oomdpb.Refusal_critical, "critical"},
			{"nobody", 1, oomdpb.Refusal_unknown, "no subject"},
			{"../etc", 1, oomdpb.Refusal_unknown, "no subject"},
			{"", 1, oomdpb.Refusal_unknown, "no subject"},
			{"stubborn", 2, oomdpb.Refusal_notRunning, "not running"},
		} {
			res := h.terminate(tc.subject, tc.instance)
			assert.Equal(t, tc.want, res.refusal, "%s#%d: %s", tc.subject, tc.instance, res.detail)
			assert.Contains(t, res.detail, tc.detail, tc.subject)
			assert.Zero(t, res.pid)
		}
		assert.Equal(t, -1, index(h.events(), "sigterm crit"), "a refused terminate sends nothing")
	})

	assert.Equal(t, 0, h.stop())
	starts := 0
	for _, l := range h.events() {
		if l == "start victim" {
			starts++
		}
	}
	assert.Equal(t, 1, starts, "a terminated service is not restarted")
}

func TestIdentityAndGrants(t *testing.T) {
	a := child("a", "--whoami", "${RUNTIME_DIR}/a.json")
	a.Critical = true
	b := child("b", "--whoami", "${RUNTIME_DIR}/b.json")
	h := start(t, []svc{a, b})
	for _, tc := range []struct {
		id       string
		critical bool
	}{{"a", true}, {"b", false}} {
		var w struct {
			Subject   string
			Instance  uint64
			Critical  bool
			GrantsErr string
			EnvClaim  string
		}
		path := h.path(tc.id + ".json")
		h.waitFor(path, func() bool { _, err := os.Stat(path); return err == nil })
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(data, &w))
		assert.Equal(t, tc.id, w.Subject, "whoami is the child's own subject")
		assert.Equal(t, uint64(1), w.Instance)
		assert.Equal(t, tc.critical, w.Critical)
		assert.Equal(t, tc.id, w.EnvClaim)
		assert.Contains(t, w.GrantsErr, fmt.Sprintf("grants: subject %s is not the watchdog", tc.id))
	}
	assert.Equal(t, 0, h.stop())
}

func TestChildGetsOnlyTheFdsExecdPasses(t *testing.T) {
	// A stray fd without close-on-exec in execd's environment must not reach children.
	leak, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer leak.Close()

	h := start(t, []svc{
		child("plain", "--fds", "${RUNTIME_DIR}/plain.fds"),
		watchdog(),
	}, leak)
	h.waitEvent("start plain") // written after the fd list
	assert.Equal(t, 0, h.stop())
	var got []string
	data, err := os.ReadFile(h.path("plain.fds"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &got))
	inherited := map[string]string{}
	for _, l := range got {
		f := strings.Fields(l) // fd, target (may hold spaces: "/memfd:x (deleted)"), inherited
		require.GreaterOrEqual(t, len(f), 3, l)
		if f[len(f)-1] == "true" {
			inherited[f[0]] = strings.Join(f[1:len(f)-1], " ")
		}
	}
	assert.Len(t, inherited, 6, "exactly stdin, stdout, stderr, session, memstat socket and page: %v", got)
	assert.Equal(t, os.DevNull, inherited["0"])
	assert.True(t, strings.HasPrefix(inherited["3"], "socket:"), "fd 3 is the session socket: %v", got)
	assert.True(t, strings.HasPrefix(inherited["4"], "socket:"), "fd 4 is the memstat socket: %v", got)
	assert.True(t, strings.HasPrefix(inherited["5"], "/memfd:oomd-memstat:plain"), "fd 5 is the memstat page: %v", got)
}

func TestBrokerHandsEachChildsSocketToTheWatchdog(t *testing.T) {
	early := child("early", "--memstat-byte")
	early.Critical = true
	late := withDeps(child("late", "--memstat-byte"), "wd")
	late.Injectable = true
	h := start(t, []svc{early, watchdog(), late})

	got := map[string]receivedHandoff{}
	for range 2 {
		ho := h.nextHandoff()
		got[ho.subject] = ho
	}
	require.Contains(t, got, "early", "a child started before the watchdog is handed over too")
	require.Contains(t, got, "late")
	assert.True(t, got["early"].critical)
	assert.False(t, got["early"].injectable)
	assert.True(t, got["late"].injectable)
	for subject, ho := range got {
		assert.Equal(t, uint64(1), ho.instance, subject)
		// SO_PEERCRED of a socketpair names its creator (execd), so the kernel's word on
		// the peer comes from SCM_CREDENTIALS: the pid attached to what the peer sends.
		uc := ho.conn.(*net.UnixConn)
		cred, err := rpcx.PeerCred(uc)
		require.NoError(t, err)
		assert.Equal(t, int32(h.cmd.Process.Pid), cred.Pid, "%s: SO_PEERCRED of a socketpair is its creator, execd", subject)
		raw, err := uc.SyscallConn()
		require.NoError(t, err)
		require.NoError(t, raw.Control(func(fd uintptr) {
			require.NoError(t, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1))
		}))
		uc.SetDeadline(time.Now().Add(deadline))
		_, err = uc.Write([]byte{'?'})
		require.NoError(t, err, subject)
		b, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
		n, oobn, _, _, err := uc.ReadMsgUnix(b, oob)
		require.NoError(t, err, subject)
		require.Equal(t, 1, n, subject)
		assert.Equal(t, byte('x'), b[0], "%s: the passed socket's peer is that child", subject)
		scms, err := unix.ParseSocketControlMessage(oob[:oobn])
		require.NoError(t, err)
		require.Len(t, scms, 1, subject)
		sender, err := unix.ParseUnixCredentials(&scms[0])
		require.NoError(t, err)
		assert.Equal(t, ho.pid, sender.Pid, "%s: the kernel-attached sender pid is the handoff pid", subject)
	}
	select {
	case ho := <-h.handoffs:
		t.Errorf("unexpected handoff for %s (the watchdog gets none of its own)", ho.subject)
	default:
	}
	assert.Equal(t, 0, h.stop())
}

func TestOrphansAreReapedAndManagedStatusesKept(t *testing.T) {
	h := start(t, []svc{
		watchdog(),
		withDeps(child("parent", "--orphan", "${RUNTIME_DIR}/grandchild.pid", "--exit", "7"), "wd"),
	})
	exits := h.watchExits()
	r := nextExit(t, exits, "parent")
	assert.Equal(t, int32(7), r.ExitCode, "the orphan reaper must not take a managed child's status")

	data, err := os.ReadFile(h.path("grandchild.pid"))
	require.NoError(t, err)
	gpid := strings.TrimSpace(string(data))
	h.waitFor("grandchild "+gpid+" to be reaped", func() bool {
		_, err := os.Stat("/proc/" + gpid)
		return errors.Is(err, os.ErrNotExist)
	})
	assert.Equal(t, 0, h.stop())
}

func TestRestartOnFailure(t *testing.T) {
	crashy := withDeps(child("crashy", "--fail-first", "2", "--whoami", "${RUNTIME_DIR}/crashy.json"), "wd")
	crashy.Restart = "on-failure"
	h := start(t, []svc{watchdog(), crashy})
	exits := h.watchExits()
	for i := uint64(1); i <= 2; i++ {
		r := nextExit(t, exits, "crashy")
		assert.Equal(t, report{Subject: "crashy", Instance: i, Pid: r.Pid, ExitCode: 1}, r)
	}
	path := h.path("crashy.json")
	h.waitFor("instance 3", func() bool { _, err := os.Stat(path); return err == nil })
	var w struct{ Instance uint64 }
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &w))
	assert.Equal(t, uint64(3), w.Instance)

	// Each instance gets its own handoff; earlier ones may be dropped if they exited
	// before it was sent, but the running one is always handed over.
	for {
		ho := h.nextHandoff()
		if ho.instance == 3 {
			break
		}
	}
	res := h.terminate("crashy", 3)
	assert.Equal(t, oomdpb.Refusal_none, res.refusal, res.detail)
	r := nextExit(t, exits, "crashy")
	assert.True(t, r.Terminated)
	assert.Equal(t, 0, h.stop())
}

func TestSIGTERMDuringStartupStopsCleanly(t *testing.T) {
	h := start(t, []svc{
		child("never-ready"), // never calls ready: its dependent waits forever
		withDeps(child("waiting"), "never-ready"),
	})
	h.waitEvent("start never-ready")
	assert.Equal(t, 0, h.stop())
	assert.GreaterOrEqual(t, index(h.events(), "sigterm never-ready"), 0)
	assert.Equal(t, -1, index(h.events(), "start waiting"))
}

func TestStopKillsAServiceThatIgnoresSIGTERM(t *testing.T) {
	stubborn := child("stubborn", "--ignore-term", "--ready")
	stubborn.StopTimeoutMs = 100
	h := start(t, []svc{stubborn, withDeps(child("after"), "stubborn")})
	h.waitEvent("start after")
	assert.Equal(t, 0, h.stop(), "a SIGKILLed service does not fail the shutdown")
	assert.Contains(t, h.out.String(), "did not stop in time; killing")
	ev := h.events()
	assert.Less(t, index(ev, "sigterm after"), index(ev, "sigterm stubborn"), "reverse order: %v", ev)
}

func TestExitWithEndsExecdWithThatStatus(t *testing.T) {
	oneshot := withDeps(child("oneshot", "--exit", "5"), "base")
	oneshot.ExitWith = true
	h := start(t, []svc{child("base", "--ready"), oneshot})
	assert.Equal(t, 5, h.exitCode(), "execd exits with the exitWith service's code")
	assert.GreaterOrEqual(t, index(h.events(), "sigterm base"), 0, "the others were stopped")
	assert.Contains(t, h.out.String(), "oneshot exited (exit=5) and is marked exitWith")
}

func TestNoFdLeakAcrossRestarts(t *testing.T) {
	cycler := withDeps(child("cycler"), "wd")
	cycler.Restart = "always"
	h := start(t, []svc{watchdog(), cycler})
	fds := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h.cmd.Process.Pid))
		require.NoError(t, err)
		return len(ents)
	}
	baseline := 0
	for instance := uint64(1); instance <= 5; instance++ {
		var ho receivedHandoff
		for ho.instance != instance {
			ho = h.nextHandoff()
		}
		h.waitFor(fmt.Sprintf("cycler#%d to handle SIGTERM", instance), func() bool {
			return strings.Count(strings.Join(h.events(), "\n"), "start cycler") >= int(instance)
		})
		if instance == 2 {
			baseline = fds()
		}
		if instance > 2 {
			// The previous instance's session closes asynchronously; a leak never settles.
			h.waitFor(fmt.Sprintf("execd's fd count back to %d", baseline), func() bool { return fds() == baseline })
		}
		require.NoError(t, syscall.Kill(int(ho.pid), syscall.SIGTERM))
	}
	assert.Equal(t, 0, h.stop())
}

func TestWatchdogRestartGetsBacklogAndNewHandoffs(t *testing.T) {
	wd := watchdog()
	wd.Critical = false
	wd.Restart = "on-failure"
	worker := withDeps(child("worker", "--ready"), "wd")
	worker.Restart = "on-failure"
	h := start(t, []svc{wd, worker})
	h.watchExits() // registered on the first watchdog, which dies with it
	ho := h.nextHandoff()
	require.Equal(t, "worker", ho.subject)
	h.waitEvent("start worker")

	// The watchdog crashes (and is restarted); the worker crashes meanwhile.
	wdPid := h.pidOf("wd")
	require.NoError(t, syscall.Kill(wdPid, syscall.SIGKILL))
	require.NoError(t, syscall.Kill(int(ho.pid), syscall.SIGKILL))
	h.acceptWatchdog()

	exits := h.watchExits()
	r := nextExit(t, exits, "wd")
	assert.Equal(t, report{Subject: "wd", Instance: 1, Pid: int32(wdPid), Signal: int32(syscall.SIGKILL)}, r,
		"the first watchdog's own exit waited in the backlog for the next watcher")
	r = nextExit(t, exits, "worker")
	assert.Equal(t, report{Subject: "worker", Instance: 1, Pid: ho.pid, Signal: int32(syscall.SIGKILL)}, r)

	// The new watchdog may first get a connection to the killed worker#1 (served before
	// execd reaped it); the restarted worker#2 must follow.
	ho2 := h.nextHandoff()
	for ho2.subject == "worker" && ho2.instance == 1 {
		ho2 = h.nextHandoff()
	}
	assert.Equal(t, "worker", ho2.subject, "the restarted worker is handed to the new watchdog")
	assert.Equal(t, uint64(2), ho2.instance)
	assert.Equal(t, 0, h.stop())
}

// TestWatchdogRestartReconnectsLiveChildren: a child that outlives a watchdog crash gets
// a fresh memstat connection, delivered on its delivery socket, to the next instance.
func TestWatchdogRestartReconnectsLiveChildren(t *testing.T) {
	wd := watchdog()
	wd.Critical = false
	wd.Restart = "on-failure"
	live := withDeps(child("live", "--memstat-byte"), "wd")
	h := start(t, []svc{wd, live})
	talk := func(ho receivedHandoff) {
		t.Helper()
		ho.conn.SetDeadline(time.Now().Add(deadline))
		_, err := ho.conn.Write([]byte{'?'})
		require.NoError(t, err)
		b := make([]byte, 1)
		_, err = io.ReadFull(ho.conn, b)
		require.NoError(t, err, "the child answers on its connection to watchdog instance")
		assert.Equal(t, byte('x'), b[0])
	}
	ho := h.nextHandoff()
	require.Equal(t, "live", ho.subject)
	talk(ho)

	require.NoError(t, syscall.Kill(h.pidOf("wd"), syscall.SIGKILL))
	h.acceptWatchdog()
	ho2 := h.nextHandoff()
	assert.Equal(t, "live", ho2.subject)
	assert.Equal(t, ho.instance, ho2.instance, "the same child instance, not a restart")
	assert.Equal(t, ho.pid, ho2.pid)
	talk(ho2)
	assert.Equal(t, 2, strings.Count(strings.Join(h.events(), "\n"), "memstat-connection live"),
		"one delivered connection per watchdog instance")
	assert.Equal(t, 0, h.stop())
}

func TestChildrenDieWithExecd(t *testing.T) {
	h := start(t, []svc{child("orphaned")})
	h.waitEvent("start orphaned")
	pid := h.pidOf("orphaned")
	require.NoError(t, h.cmd.Process.Kill())
	<-h.waited
	testutil.Eventually(t, deadline, func() (string, bool) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return "reaped", true
		}
		_, rest, _ := strings.Cut(string(b), ") ")
		state, _, _ := strings.Cut(rest, " ")
		return "state " + state, state == "Z" // dead, waiting for its new parent
	}, "the child to die with execd (Pdeathsig)")
}

// pidOf reads a child's pid from execd's "started" log line.
func (h *harness) pidOf(id string) int {
	h.t.Helper()
	for _, l := range strings.Split(h.out.String(), "\n") {
		if _, rest, ok := strings.Cut(l, "\tstarted\t{\"subject\": \""+id+"\""); ok {
			var pid int
			_, after, _ := strings.Cut(rest, `"pid": `)
			_, err := fmt.Sscanf(after, "%d", &pid)
			require.NoError(h.t, err, l)
			return pid
		}
	}
	h.t.Fatalf("no started line for %s", id)
	return 0
}

// The watchdog starts even when a dependency of it fails before it was ready (security
// invariant 11): its auditing is degraded, it is not absent.
func TestWatchdogStartsWithoutItsDependency(t *testing.T) {
	wd := withDeps(watchdog(), "a")
	h := start(t, []svc{child("a", "--exit", "2"), wd, withDeps(child("app", "--ready"), "wd")})
	h.waitEvent("start wd")
	h.waitEvent("start app")
	assert.Contains(t, h.out.String(), "starting the watchdog without its dependency")
	assert.Equal(t, 0, h.stop())
}
