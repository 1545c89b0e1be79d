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

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
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
