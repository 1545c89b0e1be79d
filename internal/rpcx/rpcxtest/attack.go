// Package rpcxtest attacks a Cap'n Proto server over its real Unix socket with
// messages written from the wire format (rpc.capnp built with the std rpc package and
// written with capnp's stream encoder, or raw bytes), never through the Go client API,
// and checks after each attack that the server is unharmed. Tests of every daemon's
// socket run the same suite (Run) against their own server.
package rpcxtest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/stretchr/testify/require"
)

// Target is the server under attack.
type Target struct {
	Path string
	// Probe makes one real client call on a fresh connection (e.g. Control.status).
	Probe func(ctx context.Context) error
	// Interface is the bootstrap's interface id; Method a method of it without
	// capability params, CapMethod one with (the same as Method if none takes one).
	Interface         uint64
	Method, CapMethod uint16
	// MaxConns and FirstMessageTimeout are the server's settings.
	MaxConns            int
	FirstMessageTimeout time.Duration
	// Conns reports the server's live connections.
	Conns func() int
	// Dial, if set, replaces dialling Path: each call returns a fresh connection to the
	// server (e.g. an inherited session socket passed over by a child).
	Dial func(t *testing.T) *net.UnixConn
}

// Attack is one hostile peer. It writes on c and reports whether the server must close
// c by itself (false: the attack ends when the peer gives up).
type Attack struct {
	Name string
	Run  func(t *testing.T, tg Target, c *net.UnixConn) (mustClose bool)
}

// Attacks are the message families of issue 11.
func Attacks() []Attack {
	return []Attack{
		{"SelfResolvingPromise", selfResolvingPromise},
		{"PromiseResolvedToBootstrap", promiseResolvedToBootstrap},
		{"ZeroSizedCapTable", zeroSizedCapTable},
		{"ZeroSizedTransform", zeroSizedTransform},
		{"MillionImportCapTable", millionImports},
		{"ManyImportsInOneFrame", manyImports},
		{"UnknownInterface", unknownInterface},
		{"UnknownMessageKind", unknownMessageKind},
		{"GarbageBytes", garbage},
		{"ImpossibleSegmentTable", impossibleSegmentTable},
		{"HugeFrameClaim", hugeFrame},
		{"Slowloris", slowloris},
		{"PipelinedCallFlood", pipelinedFlood},
	}
}

// Run runs every attack against tg in a subtest, then the idle-connection flood.
func Run(t *testing.T, tg Target) {
	for _, a := range Attacks() {
		t.Run(a.Name, func(t *testing.T) { RunOne(t, tg, a) })
	}
	t.Run("IdleConnectionFlood", func(t *testing.T) { IdleFlood(t, tg) })
}

// RunOne runs attack a: baseline, attack, a real call during it, the attack's
// connection closed by the server (if the attack says so), a real call after, and
// goroutines and heap back near the baseline.
func RunOne(t *testing.T, tg Target, a Attack) {
	probe(t, tg, "before")
	gBase, hBase := settle()
	c := dial(t, tg)
	mustClose := a.Run(t, tg, c)
	probe(t, tg, "during")
	requireHeapWithin(t, hBase, "while the attacking connection is open")
	if mustClose {
		requireClosed(t, c, tg.FirstMessageTimeout+5*time.Second)
	}
	c.Close()
	probe(t, tg, "after")
	requireBaseline(t, gBase, hBase)
}

func probe(t *testing.T, tg Target, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, tg.Probe(ctx), "a real client call %s the attack", when)
}

func dial(t *testing.T, tg Target) *net.UnixConn {
	t.Helper()
	if tg.Dial != nil {
		c := tg.Dial(t)
		t.Cleanup(func() { c.Close() })
		return c
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: tg.Path, Net: "unix"})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// heapSlack is how much live heap an attack may leave, during or after.
const heapSlack = 16 << 20

// settle returns the goroutine count and live heap after a GC.
func settle() (int, uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse
}

// failer is the part of *testing.T the checks below use (a test of the checks passes
// a recorder).
type failer interface {
	Helper()
	Errorf(format string, args ...any)
	FailNow()
}

// How long the checks below wait for the server to get back (variables so that the
// checks' own test can fail them quickly).
var (
	baselineWait = 15 * time.Second
	heapWait     = 5 * time.Second
)

// requireBaseline polls (with a deadline) until goroutines are within a few of gBase
// and the live heap within 16 MiB of hBase.
func requireBaseline(t failer, gBase int, hBase uint64) {
	t.Helper()
	deadline := time.Now().Add(baselineWait)
	for {
		g, h := settle()
		if g <= gBase+4 && h <= hBase+heapSlack {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			require.Failf(t, "not back to baseline", "goroutines %d (baseline %d), heap in use %d MiB (baseline %d MiB)\n%s",
				g, gBase, h>>20, hBase>>20, buf[:n])
		}
		runtime.Gosched()
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// requireHeapWithin polls (with a deadline) until the live heap is within heapSlack of
// hBase: what an attack makes the server hold must stay bounded while it goes on.
func requireHeapWithin(t failer, hBase uint64, when string) {
	t.Helper()
	deadline := time.Now().Add(heapWait)
	for {
		_, h := settle()
		if h <= hBase+heapSlack {
			return
		}
		if time.Now().After(deadline) {
			require.Failf(t, "heap grew "+when, "heap in use %d MiB (baseline %d MiB)", h>>20, hBase>>20)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// requireClosed reads and discards until the server closes c (EOF or reset).
func requireClosed(t *testing.T, c *net.UnixConn, within time.Duration) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		require.Fail(t, "the server did not close the attacking connection", "within %v", within)
	}
}

// --- message builders ---------------------------------------------------------------

func newMsg(t *testing.T) (*capnp.Message, rpccp.Message) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	m, err := rpccp.NewRootMessage(seg)
	require.NoError(t, err)
	return msg, m
}

func send(t *testing.T, c net.Conn, msg *capnp.Message) {
	// A write error is the server closing on us; the checks that follow see it.
	_ = capnp.NewEncoder(c).Encode(msg)
}

func bootstrap(t *testing.T, c net.Conn, qid uint32) {
	msg, m := newMsg(t)
	b, err := m.NewBootstrap()
	require.NoError(t, err)
	b.SetQuestionId(qid)
	send(t, c, msg)
}

// newCall starts Call qid to iface.method on the bootstrap promise (question 0), with
// params content {word 0, ptr 0 = capability 0 if withCap}.
func newCall(t *testing.T, m rpccp.Message, qid uint32, iface uint64, method uint16, withCap bool) (rpccp.Call, rpccp.Payload) {
	call, err := m.NewCall()
	require.NoError(t, err)
	call.SetQuestionId(qid)
	call.SetInterfaceId(iface)
	call.SetMethodId(method)
	call.SendResultsTo().SetCaller()
	tgt, err := call.NewTarget()
	require.NoError(t, err)
	pa, err := tgt.NewPromisedAnswer()
	require.NoError(t, err)
	pa.SetQuestionId(0)
	p, err := call.NewParams()
	require.NoError(t, err)
	args, err := capnp.NewStruct(m.Segment(), capnp.ObjectSize{DataSize: 8, PointerCount: 1})
	require.NoError(t, err)
	if withCap {
		require.NoError(t, args.SetPtr(0, capnp.NewInterface(m.Segment(), 0).ToPtr()))
	}
	require.NoError(t, p.SetContent(args.ToPtr()))
	return call, p
}

// callWithPromise sends a call to the capability-taking method whose one capability is
// senderPromise id.
func callWithPromise(t *testing.T, tg Target, c net.Conn, qid, id uint32) {
	msg, m := newMsg(t)
	_, p := newCall(t, m, qid, tg.Interface, tg.CapMethod, true)
	tab, err := p.NewCapTable(1)
	require.NoError(t, err)
	tab.At(0).SetSenderPromise(id)
	send(t, c, msg)
}

func resolve(t *testing.T, c net.Conn, id uint32, set func(rpccp.CapDescriptor)) {
	msg, m := newMsg(t)
	r, err := m.NewResolve()
	require.NoError(t, err)
	r.SetPromiseId(id)
	d, err := r.NewCap()
	require.NoError(t, err)
	set(d)
	send(t, c, msg)
}

// --- attacks --------------------------------------------------------------------------

// selfResolvingPromise: a promise in the params that the peer resolves to itself
// (go-capnp's receive loop then spins in clientPromise.fulfill).
func selfResolvingPromise(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	callWithPromise(t, tg, c, 1, 7)
	resolve(t, c, 7, func(d rpccp.CapDescriptor) { d.SetSenderPromise(7) })
	return true
}

// promiseResolvedToBootstrap: a promise subscriber resolved to the server's own
// bootstrap capability (go-capnp panics lifting the embargo on shutdown).
func promiseResolvedToBootstrap(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	callWithPromise(t, tg, c, 1, 7)
	resolve(t, c, 7, func(d rpccp.CapDescriptor) { d.SetReceiverHosted(0) }) // go-capnp's first export
	return true
}

// zeroSized is a composite list of n zero-sized elements: one word on the wire.
func zeroSized(t *testing.T, seg *capnp.Segment, n int32) capnp.List {
	l, err := capnp.NewCompositeList(seg, capnp.ObjectSize{}, n)
	require.NoError(t, err)
	return l
}

func zeroSizedCapTable(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	msg, m := newMsg(t)
	_, p := newCall(t, m, 1, tg.Interface, tg.Method, false)
	require.NoError(t, p.SetCapTable(rpccp.CapDescriptor_List(zeroSized(t, m.Segment(), 1<<28))))
	send(t, c, msg)
	return true
}

func zeroSizedTransform(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	msg, m := newMsg(t)
	call, _ := newCall(t, m, 1, tg.Interface, tg.Method, false)
	tgt, err := call.Target()
	require.NoError(t, err)
	pa, err := tgt.PromisedAnswer()
	require.NoError(t, err)
	require.NoError(t, pa.SetTransform(rpccp.PromisedAnswer_Op_List(zeroSized(t, m.Segment(), 1<<28))))
	send(t, c, msg)
	return true
}

func importsCall(t *testing.T, tg Target, c net.Conn, n int32) {
	msg, m := newMsg(t)
	_, p := newCall(t, m, 1, tg.Interface, tg.CapMethod, true)
	tab, err := p.NewCapTable(n)
	require.NoError(t, err)
	for i := range int(n) {
		tab.At(i).SetSenderHosted(uint32(i))
	}
	send(t, c, msg)
}

// millionImports: a cap table of a million distinct imports (16 MiB; the frame bound
// refuses it before it is read).
func millionImports(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	importsCall(t, tg, c, 1_000_000)
	return true
}

// manyImports: as many distinct imports as fit in one frame under 1 MiB.
func manyImports(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	importsCall(t, tg, c, 60_000)
	return true
}

func unknownInterface(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	msg, m := newMsg(t)
	newCall(t, m, 1, 0x8000_0000_dead_beef, 0, false)
	send(t, c, msg)
	return true
}

// unknownMessageKind: an obsolete Save, which no current peer sends.
func unknownMessageKind(t *testing.T, tg Target, c *net.UnixConn) bool {
	msg, m := newMsg(t)
	require.NoError(t, m.SetObsoleteSave(capnp.Ptr{}))
	send(t, c, msg)
	return true
}

func writeRaw(c net.Conn, b []byte) { _, _ = c.Write(b) }

func garbage(t *testing.T, tg Target, c *net.UnixConn) bool {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i*131 + 7)
	}
	writeRaw(c, b)
	return true
}

// impossibleSegmentTable: 4 billion segments.
func impossibleSegmentTable(t *testing.T, tg Target, c *net.UnixConn) bool {
	var b [16]byte
	binary.LittleEndian.PutUint32(b[0:], 0xffff_fffe)
	binary.LittleEndian.PutUint32(b[4:], 0xffff_ffff)
	writeRaw(c, b[:])
	return true
}

// hugeFrame: one segment of 2 GiB announced, a few bytes sent.
func hugeFrame(t *testing.T, tg Target, c *net.UnixConn) bool {
	var b [16]byte
	binary.LittleEndian.PutUint32(b[0:], 0)
	binary.LittleEndian.PutUint32(b[4:], 1<<28)
	writeRaw(c, b[:])
	return true
}

// slowloris: three bytes of a frame header, then nothing.
func slowloris(t *testing.T, tg Target, c *net.UnixConn) bool {
	writeRaw(c, []byte{0, 0, 0})
	return true
}

// pipelinedFlood: thousands of pipelined calls without ever reading a Return.
func pipelinedFlood(t *testing.T, tg Target, c *net.UnixConn) bool {
	bootstrap(t, c, 0)
	msg, m := newMsg(t)
	call, _ := newCall(t, m, 1, tg.Interface, tg.Method, false)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(2*time.Second)))
	enc := capnp.NewEncoder(c)
	for i := uint32(1); i <= 20_000; i++ {
		call.SetQuestionId(i)
		if enc.Encode(msg) != nil {
			break // held by backpressure: the socket is full
		}
	}
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	return false
}

// IdleFlood opens twice the connection limit of idle connections (some with three
// bytes of a header): the server stays within its bound, a real client still gets in,
// and every idle connection is closed.
func IdleFlood(t *testing.T, tg Target) {
	probe(t, tg, "before")
	gBase, hBase := settle()
	var idle []*net.UnixConn
	for i := range 2 * tg.MaxConns {
		c := dial(t, tg)
		if i%2 == 0 {
			writeRaw(c, []byte{0, 0, 0})
		}
		idle = append(idle, c)
	}
	probe(t, tg, "during")
	if tg.Conns != nil {
		require.LessOrEqual(t, tg.Conns(), tg.MaxConns)
	}
	for _, c := range idle {
		requireClosed(t, c, tg.FirstMessageTimeout+5*time.Second)
		c.Close()
	}
	probe(t, tg, "after")
	requireBaseline(t, gBase, hBase)
}
