package rpcx

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
)

// panicky is a TestHook whose inject panics (nil map write) when asked for 0 bytes.
type panicky struct{ total uint64 }

func (h *panicky) Inject(_ context.Context, call oomdpb.TestHook_inject) error {
	n := call.Args().Bytes()
	if n == 0 {
		var m map[string]int
		m["boom"] = 1
	}
	h.total += n
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetTotalBytes(h.total)
	return nil
}

func servePanicky(t *testing.T, recovering bool) oomdpb.TestHook {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.sock")
	l, err := Listen(path)
	require.NoError(t, err)
	log := zaptest.NewLogger(t)
	srv := NewServer(log, func(Peer) (capnp.Client, error) {
		h := &panicky{}
		if recovering {
			return Recovering(oomdpb.TestHook_Methods(nil, h), h, log), nil
		}
		return capnp.Client(oomdpb.TestHook_ServerToClient(h)), nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	conn, boot, err := Dial(ctx, path, log)
	require.NoError(t, err)
	t.Cleanup(func() {
		boot.Release()
		conn.Close()
		cancel()
		require.NoError(t, <-done)
		srv.Close(2 * time.Second)
	})
	return oomdpb.TestHook(boot)
}

func tryInject(ctx context.Context, c oomdpb.TestHook, n uint64) (uint64, error) {
	f, rel := c.Inject(ctx, func(p oomdpb.TestHook_inject_Params) error { p.SetBytes(n); return nil })
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return 0, err
	}
	return res.TotalBytes(), nil
}

// TestHandlerPanicFailsOnlyThatCall: with Recovering, a panicking method is an
// exception for its caller, and the same connection and object keep serving.
func TestHandlerPanicFailsOnlyThatCall(t *testing.T) {
	c := servePanicky(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := tryInject(ctx, c, 0)
	require.ErrorContains(t, err, ErrHandlerPanic)
	got, err := tryInject(ctx, c, 5)
	require.NoError(t, err)
	require.Equal(t, uint64(5), got)
	_, err = tryInject(ctx, c, 0)
	require.ErrorContains(t, err, ErrHandlerPanic)
	got, err = tryInject(ctx, c, 2)
	require.NoError(t, err)
	require.Equal(t, uint64(7), got)
}

// TestGoCapnpDoesNotRecoverHandlerPanics is why Recovering exists: the same server
// built with the generated TestHook_ServerToClient ends the whole process on the first
// panicking call (run in a child process).
func TestGoCapnpDoesNotRecoverHandlerPanics(t *testing.T) {
	if os.Getenv("RPCX_PANIC_CHILD") == "1" {
		c := servePanicky(t, false)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tryInject(ctx, c, 0)
		return // not reached: the server's panic ends the process
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGoCapnpDoesNotRecoverHandlerPanics$", "-test.count=1")
	cmd.Env = append(os.Environ(), "RPCX_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the child survived a handler panic:\n%s", out)
	require.Contains(t, string(out), "assignment to entry in nil map")
}
