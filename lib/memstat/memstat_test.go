package memstat

import (
	"context"
	"errors"
	"net"
	"strconv"
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
	"oomd.dev/oomd/lib/memstat/page"
)

// sink is a watchdog's MemstatSink that forwards every reported value.
type sink struct{ got chan uint64 }

func (s sink) Report(_ context.Context, call oomdpb.MemstatSink_report) error {
	sm, err := call.Args().Sample()
	if err != nil {
		return err
	}
	s.got <- sm.Bytes()
	return nil
}

// hook is the publisher's bootstrap: a TestHook answering with a fixed total.
type hook struct{}

func (hook) Inject(_ context.Context, call oomdpb.TestHook_inject) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetTotalBytes(call.Args().Bytes() + 1)
	return nil
}

// watchdog plays one watchdog instance: it delivers the child a fresh connection on
// the delivery socket and serves a sink on its own end.
func watchdog(t *testing.T, delivery *net.UnixConn) (*rpc.Conn, chan uint64) {
	t.Helper()
	mine, theirs, err := rpcx.Socketpair()
	require.NoError(t, err)
	require.NoError(t, rpcx.DeliverConn(delivery, theirs))
	theirs.Close()
	c, err := rpcx.FileToConn(mine)
	require.NoError(t, err)
	got := make(chan uint64, 16)
	conn := rpcx.NewConn(c, capnp.Client(oomdpb.MemstatSink_ServerToClient(sink{got})), zap.NewNop())
	return conn, got
}

func next(t *testing.T, got chan uint64) uint64 {
	t.Helper()
	select {
	case v := <-got:
		return v
	case <-time.After(20 * time.Second):
		t.Fatal("no sample")
		return 0
	}
}

// TestPublisherFollowsDeliveries: the publisher connects to each delivered connection,
// re-publishes its latest value there at once (without a new Set), offers its
// bootstrap again, and ends only when the delivery socket closes.
func TestPublisherFollowsDeliveries(t *testing.T) {
	execd, child, err := rpcx.SeqpacketPair()
	require.NoError(t, err)
	defer execd.Close()
	f, err := child.File()
	require.NoError(t, err)
	child.Close()
	defer f.Close()
	t.Setenv(rpcx.EnvMemstatFD, strconv.Itoa(int(f.Fd())))
	t.Setenv(rpcx.EnvSubject, "hog")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub, err := Connect(ctx, Options{Period: time.Millisecond, Bootstrap: capnp.Client(oomdpb.TestHook_ServerToClient(hook{}))},
		zap.NewNop()) // background goroutines log after the test ends
	require.NoError(t, err)
	defer pub.Close()
	ran := make(chan error, 1)
	go func() { ran <- pub.Run(ctx) }()
	pub.Set(42) // before any watchdog: kept, sent on the first connection

	first, got1 := watchdog(t, execd)
	assert.Equal(t, uint64(42), next(t, got1))
	pub.Set(43)
	assert.Equal(t, uint64(43), next(t, got1))

	// The watchdog dies; its successor gets the latest value without a new Set, and
	// reaches the publisher's bootstrap on the new connection.
	require.NoError(t, first.Close())
	second, got2 := watchdog(t, execd)
	defer second.Close()
	assert.Equal(t, uint64(43), next(t, got2))
	th := oomdpb.TestHook(second.Bootstrap(ctx))
	defer th.Release()
	fut, rel := th.Inject(ctx, func(p oomdpb.TestHook_inject_Params) error { p.SetBytes(9); return nil })
	res, err := fut.Struct()
	require.NoError(t, err)
	assert.Equal(t, uint64(10), res.TotalBytes())
	rel()
	assert.Equal(t, uint64(2), pub.Connections())

	select {
	case err := <-ran:
		t.Fatalf("Run ended while deliveries may still come: %v", err)
	default:
	}
	require.NoError(t, execd.Close())
	select {
	case err := <-ran:
		assert.True(t, errors.Is(err, ErrDeliveryClosed), "%v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not end when the delivery socket closed")
	}
}

// pageFor makes a page and returns a Reader on it and the number of an fd that holds it
// read-write, as execd's child would inherit it (Connect takes the fd over).
func pageFor(t *testing.T) (*page.Reader, int) {
	t.Helper()
	rw, err := page.Create("memstat-test")
	require.NoError(t, err)
	defer rw.Close()
	ro, err := page.ReadOnly(rw)
	require.NoError(t, err)
	defer ro.Close()
	r, err := page.NewReader(ro)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	fd, err := unix.Dup(int(rw.Fd()))
	require.NoError(t, err)
	return r, fd
}

// TestPublisherOnPage: with a page and no delivery socket, Set is a store on the page
// that the reader sees at once, Run sends nothing and ends with ctx, and Close leaves
// the last value readable with the closed flag.
func TestPublisherOnPage(t *testing.T) {
	r, fd := pageFor(t)
	t.Setenv(EnvPageFD, strconv.Itoa(fd))
	t.Setenv(rpcx.EnvMemstatFD, "")

	pub, err := Connect(context.Background(), Options{}, zaptest.NewLogger(t))
	require.NoError(t, err)
	require.True(t, pub.OnPage())
	require.Nil(t, pub.Done())
	_, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	assert.ErrorIs(t, err, unix.EBADF, "the inherited fd is closed once mapped")

	_, st := r.Read()
	assert.Equal(t, page.NeverWritten, st)
	pub.Set(42)
	s, st := r.Read()
	assert.Equal(t, page.OK, st)
	assert.Equal(t, uint64(42), s.Bytes)
	pub.Set(43)
	s, st = r.Read()
	assert.Equal(t, page.OK, st)
	assert.Equal(t, page.Sample{Bytes: 43, Counter: 2, Seq: 4}, s)
	assert.Equal(t, uint64(2), pub.Sent())

	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- pub.Run(ctx) }()
	cancel()
	select {
	case err := <-ran:
		assert.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not end with its context")
	}

	require.NoError(t, pub.Close())
	require.NoError(t, pub.Close())
	pub.Set(44) // after Close: dropped, no fault
	s, st = r.Read()
	assert.Equal(t, page.Closed, st)
	assert.Equal(t, uint64(43), s.Bytes)
}

// TestPublisherPageAndDelivery: with both a page and a delivery socket, samples go to
// the page only, while the bootstrap (the TestHook) is still offered on each delivered
// connection.
func TestPublisherPageAndDelivery(t *testing.T) {
	r, fd := pageFor(t)
	t.Setenv(EnvPageFD, strconv.Itoa(fd))
	execd, child, err := rpcx.SeqpacketPair()
	require.NoError(t, err)
	defer execd.Close()
	f, err := child.File()
	require.NoError(t, err)
	child.Close()
	defer f.Close()
	t.Setenv(rpcx.EnvMemstatFD, strconv.Itoa(int(f.Fd())))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub, err := Connect(ctx, Options{Period: time.Millisecond, Bootstrap: capnp.Client(oomdpb.TestHook_ServerToClient(hook{}))},
		zap.NewNop())
	require.NoError(t, err)
	defer pub.Close()
	require.True(t, pub.OnPage())
	go pub.Run(ctx)
	pub.Set(42)

	wd, got := watchdog(t, execd)
	defer wd.Close()
	th := oomdpb.TestHook(wd.Bootstrap(ctx))
	defer th.Release()
	fut, rel := th.Inject(ctx, func(p oomdpb.TestHook_inject_Params) error { p.SetBytes(9); return nil })
	res, err := fut.Struct()
	require.NoError(t, err)
	assert.Equal(t, uint64(10), res.TotalBytes())
	rel()

	s, st := r.Read()
	assert.Equal(t, page.OK, st)
	assert.Equal(t, uint64(42), s.Bytes)
	select {
	case v := <-got:
		t.Fatalf("sample %d sent over RPC although there is a page", v)
	default:
	}
}

// TestConnectBadPage: a page fd that is not a page is an error, not a silent RPC
// fallback: execd's wiring is wrong.
func TestConnectBadPage(t *testing.T) {
	fd, err := unix.MemfdCreate("not-a-page", unix.MFD_CLOEXEC)
	require.NoError(t, err)
	t.Setenv(EnvPageFD, strconv.Itoa(fd))
	t.Setenv(rpcx.EnvMemstatFD, "")
	_, err = Connect(context.Background(), Options{}, zap.NewNop())
	assert.ErrorIs(t, err, page.ErrInvalidPage)
	assert.ErrorContains(t, err, EnvPageFD)

	t.Setenv(EnvPageFD, "2")
	_, err = Connect(context.Background(), Options{}, zap.NewNop())
	assert.ErrorContains(t, err, "not an inherited fd number")
}
