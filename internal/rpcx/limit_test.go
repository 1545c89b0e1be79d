package rpcx

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
)

// countingSink is a MemstatSink that counts the calls it handled.
type countingSink struct{ n atomic.Uint64 }

func (s *countingSink) Report(context.Context, oomdpb.MemstatSink_report) error {
	s.n.Add(1)
	return nil
}

// rawFrames returns a framed Bootstrap (question 0) and a framed report Call on it,
// with the offset of the call's question id.
func rawFrames(t testing.TB) (boot, call []byte, qidOff int) {
	t.Helper()
	msg, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
	m, _ := rpccp.NewRootMessage(seg)
	b, _ := m.NewBootstrap()
	b.SetQuestionId(0)
	boot, err := msg.Marshal()
	require.NoError(t, err)

	msg, seg, _ = capnp.NewMessage(capnp.SingleSegment(nil))
	m, _ = rpccp.NewRootMessage(seg)
	c, _ := m.NewCall()
	c.SetQuestionId(0x7eadbeef)
	c.SetInterfaceId(oomdpb.MemstatSink_TypeID)
	tgt, _ := c.NewTarget()
	pa, _ := tgt.NewPromisedAnswer()
	pa.SetQuestionId(0)
	p, _ := c.NewParams()
	args, _ := oomdpb.NewMemstatSink_report_Params(seg)
	s, _ := args.NewSample()
	s.SetBytes(1 << 20)
	require.NoError(t, p.SetContent(args.ToPtr()))
	c.SendResultsTo().SetCaller()
	call, err = msg.Marshal()
	require.NoError(t, err)
	var sent [4]byte
	binary.LittleEndian.PutUint32(sent[:], 0x7eadbeef)
	qidOff = bytes.Index(call, sent[:])
	require.GreaterOrEqual(t, qidOff, 0)
	return boot, call, qidOff
}

// serveLimited serves a countingSink on one end of an in-memory pipe (no kernel
// buffering: a write completes only when the other side reads it) and returns the
// other end, the codec and the conn.
func serveLimited(t *testing.T, lim Limits) (net.Conn, *limitCodec, *rpc.Conn, *countingSink) {
	t.Helper()
	a, b := net.Pipe()
	sink := &countingSink{}
	codec := newLimitCodec(a, lim, zaptest.NewLogger(t))
	conn := rpc.NewConn(transportFor(codec), &rpc.Options{
		BootstrapClient: capnp.Client(oomdpb.MemstatSink_ServerToClient(sink)),
		Logger:          Logger(zaptest.NewLogger(t)),
	})
	t.Cleanup(func() { b.Close(); conn.Close() })
	return b, codec, conn, sink
}

// TestFloodWithoutReadingIsHeldAtTheBound: a peer that writes calls and never reads
// gets MaxUnreturned calls handled, then its writes stop being read.
func TestFloodWithoutReadingIsHeldAtTheBound(t *testing.T) {
	const bound = 16
	peer, codec, _, sink := serveLimited(t, Limits{MaxUnreturned: bound})
	boot, call, off := rawFrames(t)
	goroutines := runtime.NumGoroutine()

	var written atomic.Uint64
	go func() {
		if _, err := peer.Write(boot); err != nil {
			return
		}
		for q := uint32(1); ; q++ {
			binary.LittleEndian.PutUint32(call[off:], q)
			if _, err := peer.Write(call); err != nil {
				return
			}
			written.Add(1)
		}
	}()
	// Wait (on the codec's own state) until the reader holds a question at the bound.
	require.Eventually(t, func() bool {
		codec.mu.Lock()
		defer codec.mu.Unlock()
		return codec.stalls > 0
	}, 10*time.Second, time.Millisecond)
	codec.mu.Lock()
	unreturned, open := codec.unreturned, len(codec.open)
	codec.mu.Unlock()
	assert.Equal(t, bound, unreturned)
	assert.LessOrEqual(t, open, bound+1) // + the bootstrap answer, returned, not finished
	// The bootstrap and at most bound-1 calls got in, plus the one held in Decode; the
	// pipe takes nothing more.
	assert.LessOrEqual(t, written.Load(), uint64(bound+1))
	assert.LessOrEqual(t, sink.n.Load(), uint64(bound+1))
	assert.Less(t, runtime.NumGoroutine()-goroutines, 20, "goroutines grew with the flood")
}

// TestPeerThatNeverFinishesCostsNothing: a peer that reads every Return but never
// sends Finish keeps its connection, and what the server holds does not grow with the
// number of calls (FinishOnReturn finishes them on its behalf).
func TestPeerThatNeverFinishesCostsNothing(t *testing.T) {
	const bound = 8
	peer, codec, conn, sink := serveLimited(t, Limits{MaxUnreturned: bound, FinishOnReturn: true})
	boot, call, off := rawFrames(t)
	go io.Copy(io.Discard, peer)
	go func() {
		if _, err := peer.Write(boot); err != nil {
			return
		}
		for q := uint32(1); ; q++ {
			binary.LittleEndian.PutUint32(call[off:], q)
			if _, err := peer.Write(call); err != nil {
				return
			}
		}
	}()
	heapAfter := func(n uint64) uint64 {
		require.Eventually(t, func() bool { return sink.n.Load() >= n }, 60*time.Second, time.Millisecond)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	h1 := heapAfter(20000)
	h2 := heapAfter(80000)
	t.Logf("heap after 20k calls %d B, after 80k %d B", h1, h2)
	// Without FinishOnReturn the 60 000 extra answers would hold ~1 KB each.
	assert.Less(t, int64(h2)-int64(h1), int64(4<<20), "server memory grew with calls the peer never finished")
	codec.mu.Lock()
	open, owed := len(codec.open), len(codec.finishes)
	codec.mu.Unlock()
	assert.LessOrEqual(t, open, bound+1)
	assert.LessOrEqual(t, owed, bound+1)
	select {
	case <-conn.Done():
		t.Fatal("connection closed")
	default:
	}
}

// TestBootstrapFloodIsDisconnected: bootstrap answers are never finished early, so a
// peer that keeps opening them is cut off.
func TestBootstrapFloodIsDisconnected(t *testing.T) {
	peer, _, conn, _ := serveLimited(t, Limits{MaxUnreturned: 64, FinishOnReturn: true})
	go io.Copy(io.Discard, peer)
	go func() {
		for q := uint32(0); ; q++ {
			msg, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
			m, _ := rpccp.NewRootMessage(seg)
			b, _ := m.NewBootstrap()
			b.SetQuestionId(q)
			buf, _ := msg.Marshal()
			if _, err := peer.Write(buf); err != nil {
				return
			}
		}
	}()
	select {
	case <-conn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open after a bootstrap flood")
	}
}

// TestWellBehavedStreamingClientsAreUnaffected: go-capnp clients streaming as fast as
// they can, with and without a flow limiter, finish every call under PublisherLimits.
func TestWellBehavedStreamingClientsAreUnaffected(t *testing.T) {
	for _, limited := range []bool{true, false} {
		name := "nolimiter"
		if limited {
			name = "fixedlimiter"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, b := net.Pipe()
			sink := &countingSink{}
			server := NewLimitedConn(a, capnp.Client(oomdpb.MemstatSink_ServerToClient(sink)), zaptest.NewLogger(t), PublisherLimits)
			defer server.Close()
			client := NewConn(b, capnp.Client{}, zaptest.NewLogger(t))
			defer client.Close()
			s := oomdpb.MemstatSink(client.Bootstrap(ctx))
			defer s.Release()
			if limited {
				s.SetFlowLimiter(flowcontrol.NewFixedLimiter(16 << 10))
			}
			const n = 20000
			for i := range n {
				require.NoError(t, s.Report(ctx, func(p oomdpb.MemstatSink_report_Params) error {
					smp, err := p.NewSample()
					smp.SetSeq(uint64(i))
					return err
				}))
			}
			require.NoError(t, s.WaitStreaming())
			assert.Equal(t, uint64(n), sink.n.Load())
			select {
			case <-server.Done():
				t.Fatal("server closed a well-behaved client")
			default:
			}
		})
	}
}

// bufRWC is a bytes.Buffer as an io.ReadWriteCloser.
type bufRWC struct{ bytes.Buffer }

func (*bufRWC) Close() error { return nil }

// TestCodecFramesLikeCapnpEncoder: the codec's single-write framing is the standard
// stream framing, for one and several segments, and large frames take the encoder.
func TestCodecFramesLikeCapnpEncoder(t *testing.T) {
	for _, size := range []int{8, 300, 5000, 100 << 10} {
		msg, seg, err := capnp.NewMessage(capnp.MultiSegment(nil))
		require.NoError(t, err)
		root, err := capnp.NewRootStruct(seg, capnp.ObjectSize{PointerCount: 2})
		require.NoError(t, err)
		// Two data blobs, the second forced into its own segment when large.
		d1, err := capnp.NewData(seg, bytes.Repeat([]byte{1}, size))
		require.NoError(t, err)
		require.NoError(t, root.SetPtr(0, d1.ToPtr()))
		d2, err := capnp.NewData(seg, bytes.Repeat([]byte{2}, size))
		require.NoError(t, err)
		require.NoError(t, root.SetPtr(1, d2.ToPtr()))

		t.Logf("size %d: %d segments", size, msg.NumSegments())
		var want bytes.Buffer
		require.NoError(t, capnp.NewEncoder(&want).Encode(msg))
		got := &bufRWC{}
		c := newLimitCodec(got, Limits{}, nil)
		require.NoError(t, c.Encode(msg))
		assert.Equal(t, want.Bytes(), got.Bytes(), "size %d, %d segments", size, msg.NumSegments())
		back, err := c.Decode()
		require.NoError(t, err)
		r, err := back.Root()
		require.NoError(t, err)
		p, err := r.Struct().Ptr(1)
		require.NoError(t, err)
		assert.Equal(t, bytes.Repeat([]byte{2}, size), p.Data())
	}
}
