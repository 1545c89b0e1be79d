package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

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
		{"oomd", rpcxtest.Target{Path: s.path("oomd.sock"), Probe: status0(s.path("oomd.sock")),
			Interface: oomdpb.Control_TypeID, Method: 5, CapMethod: 3, FirstMessageTimeout: rpcx.DefaultFirstMessageTimeout}, pidOf(t, s, "oomd")},
		{"logd", rpcxtest.Target{Path: s.path("logd.sock"), Probe: journalStatus0(s.path("logd.sock")),
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

func status0(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		conn, boot, err := rpcx.Dial(ctx, path, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		c := oomdpb.Control(boot)
		defer c.Release()
		f, rel := c.Status(ctx, nil)
		defer rel()
		_, err = f.Struct()
		return err
	}
}

func journalStatus0(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		conn, boot, err := rpcx.Dial(ctx, path, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		j := oomdpb.Journal(boot)
		defer j.Release()
		f, rel := j.Status(ctx, nil)
		defer rel()
		_, err = f.Struct()
		return err
	}
}
