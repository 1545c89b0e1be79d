package rpcx

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
)

// hook is a TestHook that adds to a per-connection total, so the test can tell that
// each connection got its own bootstrap object.
type hook struct{ total uint64 }

func (h *hook) Inject(_ context.Context, call oomdpb.TestHook_inject) error {
	h.total += call.Args().Bytes()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetTotalBytes(h.total)
	return nil
}

func startServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path)
	require.NoError(t, err)
	srv := NewServer(zaptest.NewLogger(t), func(Peer) (capnp.Client, error) {
		return capnp.Client(oomdpb.TestHook_ServerToClient(&hook{})), nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		srv.Close(2 * time.Second)
	})
	return path
}

func inject(t *testing.T, ctx context.Context, c oomdpb.TestHook, n uint64) uint64 {
	t.Helper()
	f, rel := c.Inject(ctx, func(p oomdpb.TestHook_inject_Params) error { p.SetBytes(n); return nil })
	defer rel()
	res, err := f.Struct()
	require.NoError(t, err)
	return res.TotalBytes()
}

func TestServerGivesEachConnectionItsOwnBootstrap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := startServer(t)
	log := zaptest.NewLogger(t)

	conn1, c1, err := Dial(ctx, path, log)
	require.NoError(t, err)
	defer conn1.Close()
	defer c1.Release()
	conn2, c2, err := Dial(ctx, path, log)
	require.NoError(t, err)
	defer conn2.Close()
	defer c2.Release()

	assert.Equal(t, uint64(5), inject(t, ctx, oomdpb.TestHook(c1), 5))
	assert.Equal(t, uint64(7), inject(t, ctx, oomdpb.TestHook(c2), 7), "second connection must not share the first one's object")
	assert.Equal(t, uint64(10), inject(t, ctx, oomdpb.TestHook(c1), 5))
}

func TestOversizedFrameClosesOnlyThatConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := startServer(t)

	good, gc, err := Dial(ctx, path, zaptest.NewLogger(t))
	require.NoError(t, err)
	defer good.Close()
	defer gc.Release()

	bad, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer bad.Close()
	// A stream frame header: one segment of 1<<24 words (128 MiB), far over the bound.
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[0:], 0)
	binary.LittleEndian.PutUint32(hdr[4:], 1<<24)
	_, err = bad.Write(hdr[:])
	require.NoError(t, err)
	require.NoError(t, bad.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.Copy(io.Discard, bad) // returns when the server closes the connection
	require.NoError(t, err, "server must close the oversized connection, not time out")

	assert.Equal(t, uint64(3), inject(t, ctx, oomdpb.TestHook(gc), 3), "other connections keep working")
}

func TestRecvMsgFDRoundTrip(t *testing.T) {
	a, b, err := SeqpacketPair()
	require.NoError(t, err)
	defer a.Close()
	defer b.Close()
	x, y, err := Socketpair()
	require.NoError(t, err)
	defer y.Close()

	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	h, err := oomdpb.NewRootSubjectHandoff(seg)
	require.NoError(t, err)
	require.NoError(t, h.SetSubject("hog-1"))
	h.SetPid(42)
	require.NoError(t, SendMsgFD(a, msg, x))
	x.Close()

	got, f, err := RecvMsgFD(b)
	require.NoError(t, err)
	defer f.Close()
	gh, err := oomdpb.ReadRootSubjectHandoff(got)
	require.NoError(t, err)
	subj, _ := gh.Subject()
	assert.Equal(t, "hog-1", subj)
	assert.Equal(t, int32(42), gh.Pid())

	// The passed fd is really the peer of y.
	_, err = y.Write([]byte("x"))
	require.NoError(t, err)
	buf := make([]byte, 1)
	_, err = f.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "x", string(buf))
}

func TestListenRefusesLiveSocketAndNonSocket(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.sock")
	l, err := Listen(live)
	require.NoError(t, err)
	defer l.Close()
	_, err = Listen(live)
	require.ErrorIs(t, err, ErrSocketInUse)

	plain := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(plain, []byte("keep me"), 0o600))
	_, err = Listen(plain)
	require.ErrorContains(t, err, "not a socket")
	b, err := os.ReadFile(plain)
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b))

	stale := filepath.Join(dir, "stale.sock")
	sl, err := Listen(stale)
	require.NoError(t, err)
	sl.SetUnlinkOnClose(false)
	sl.Close()
	l2, err := Listen(stale)
	require.NoError(t, err, "a socket nobody serves is stale and may be replaced")
	l2.Close()
}
