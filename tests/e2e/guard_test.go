package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/rpcx/rpcxtest"
)

// TestRealDaemonsSurviveHostilePeers runs the protocol guard's attack families
// (internal/rpcx/rpcxtest, written from the wire format) against the real oomd and logd
// binaries of a running stack, measuring each process from /proc: a real call still
// succeeds during and after, the attacking connection is closed, RSS and open fds come
// back within bounds, and nothing spins afterwards. (The slow-peer attacks, slowloris and
// the idle flood, wait out the daemons' real deadlines, seconds each; they run against
// the same servers in-process with short deadlines: services/oomd/daemon/guard_test.go,
// services/logd-stub/server/guard_test.go.)
func TestRealDaemonsSurviveHostilePeers(t *testing.T) {
	// 100 ms ticks: oomd's own idle cost stays far below the 5 % "no spin" bound.
	s := startStack(t, manifest(""), map[string]string{"policy.json": strings.Replace(policyJSON, `"sampleMs": 10`, `"sampleMs": 100`, 1)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dialClient(t, ctx, s)
	targets := []struct {
		name string
		tg   rpcxtest.Target
		pid  int
	}{
		{"oomd", rpcxtest.Target{Path: s.path("oomd.sock"), Probe: rpcxtest.ControlStatus(s.path("oomd.sock")),
			Interface: oomdpb.Control_TypeID, Method: 5, CapMethod: 3, FirstMessageTimeout: rpcx.DefaultFirstMessageTimeout}, pidOf(t, s, "oomd")},
		{"logd", rpcxtest.Target{Path: s.path("logd.sock"), Probe: rpcxtest.JournalStatus(s.path("logd.sock")),
			Interface: oomdpb.Journal_TypeID, Method: 2, CapMethod: 2, FirstMessageTimeout: rpcx.DefaultFirstMessageTimeout}, pidOf(t, s, "logd")},
	}
	for _, tc := range targets {
		for _, a := range rpcxtest.Attacks() {
			if a.Name == "Slowloris" {
				continue
			}
			t.Run(tc.name+"/"+a.Name, func(t *testing.T) { rpcxtest.RunProc(t, tc.tg, rpcxtest.Proc{Pid: tc.pid}, a) })
		}
	}
}

// TestExecdSurvivesHostileSubjects: a subject speaks the wire format on its own execd
// session (the one socket every subject is given) with each attack family. execd — the
// process authority, PID 1 in the VM — must stay up and serving: a real Session.whoami on
// another subject's session works before, during and after, the attacking session is
// closed, and execd's RSS, fds and idle CPU stay within the same bounds as the daemons'.
func TestExecdSurvivesHostileSubjects(t *testing.T) {
	attacks := rpcxtest.Attacks()
	dir := t.TempDir()
	sock := filepath.Join(dir, "leak.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	require.NoError(t, err)
	defer l.Close()
	var extra strings.Builder
	for i := 0; i <= len(attacks); i++ { // one subject per attack, plus one for the probe
		fmt.Fprintf(&extra, `,
  {"id": "leak%d", "argv": ["${BIN}/sessionleak", "--to", %q], "dependsOn": ["oomd"], "stopTimeoutMs": 500}`, i, sock)
	}
	s := startStack(t, manifest(extra.String()), map[string]string{"policy.json": strings.Replace(policyJSON, `"sampleMs": 10`, `"sampleMs": 100`, 1)})
	sessions := make(chan *net.UnixConn, len(attacks)+1)
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			b, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
			_, oobn, _, _, err := c.ReadMsgUnix(b, oob)
			c.Close()
			if err != nil {
				continue
			}
			scms, _ := unix.ParseSocketControlMessage(oob[:oobn])
			if len(scms) != 1 {
				continue
			}
			fds, _ := unix.ParseUnixRights(&scms[0])
			if len(fds) != 1 {
				continue
			}
			fc, err := net.FileConn(os.NewFile(uintptr(fds[0]), "session"))
			if err == nil {
				sessions <- fc.(*net.UnixConn)
			}
		}
	}()
	// Every subject up and its session here before the baseline: execd's fd count must
	// not be measured while it is still spawning.
	var leaked []*net.UnixConn
	for range len(attacks) + 1 {
		select {
		case c := <-sessions:
			leaked = append(leaked, c)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d leaked sessions arrived", len(leaked), len(attacks)+1)
		}
	}
	s.waitLine("all services started", 20*time.Second)
	next := func(t *testing.T) *net.UnixConn {
		c := leaked[0]
		leaked = leaked[1:]
		return c
	}
	probeConn := rpcx.NewConn(next(t), capnp.Client{}, nil)
	defer probeConn.Close()
	sess := oomdpb.Session(probeConn.Bootstrap(context.Background()))
	defer sess.Release()
	tg := rpcxtest.Target{
		Probe: func(ctx context.Context) error {
			f, rel := sess.Whoami(ctx, nil)
			defer rel()
			_, err := f.Struct()
			return err
		},
		Interface: oomdpb.Session_TypeID, Method: 0, CapMethod: 3, // whoami; watchReboot(watcher)
		FirstMessageTimeout: rpcx.DefaultFrameTimeout,
		Dial:                next,
	}
	execd := rpcxtest.Proc{Pid: s.cmd.Process.Pid}
	for _, a := range attacks {
		t.Run(a.Name, func(t *testing.T) { rpcxtest.RunProc(t, tg, execd, a) })
	}
}
