package rpcx

import (
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/schemas"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
)

func controlGuard(t testing.TB) *Guard {
	var reg schemas.Registry
	oomdpb.RegisterSchema(&reg)
	data, err := reg.Find(oomdpb.Control_TypeID)
	require.NoError(t, err)
	s, err := LoadSchema(data)
	require.NoError(t, err)
	g, err := DeriveGuard(s, Socket{Name: "control", Serves: oomdpb.Control_TypeID})
	require.NoError(t, err)
	return g
}

// subscribeCall is Control.subscribe on the bootstrap promise with one senderHosted
// subscriber: the largest envelope a control client legitimately sends.
func subscribeCall(t testing.TB) *capnp.Message {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	m, _ := rpccp.NewRootMessage(seg)
	call, _ := m.NewCall()
	call.SetQuestionId(1)
	call.SetInterfaceId(oomdpb.Control_TypeID)
	call.SetMethodId(3)
	call.SendResultsTo().SetCaller()
	tgt, _ := call.NewTarget()
	pa, _ := tgt.NewPromisedAnswer()
	pa.SetQuestionId(0)
	p, _ := call.NewParams()
	args, _ := oomdpb.NewControl_subscribe_Params(seg)
	args.SetSinceSeq(42)
	require.NoError(t, capnp.Struct(args).SetPtr(0, capnp.NewInterface(seg, 0).ToPtr()))
	require.NoError(t, p.SetContent(args.ToPtr()))
	tab, _ := p.NewCapTable(1)
	tab.At(0).SetSenderHosted(3)
	return msg
}

// BenchmarkGuard is the guard's cost per message: what Decode adds when a guard is set
// (depth and read limits, the checks, the import table). BenchmarkNoGuard is the parse
// every connection already paid for its limits, for comparison.
func BenchmarkGuard(b *testing.B) {
	c := newLimitCodec(nopRWC{}, Limits{Guard: controlGuard(b)}, zap.NewNop())
	msg := subscribeCall(b)
	b.ReportAllocs()
	for b.Loop() {
		msg.DepthLimit = c.guard.g.MaxDepth
		msg.ResetReadLimit(c.guard.g.MaxTraversalWords)
		rm, err := rpccp.ReadRootMessage(msg)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.check(rm); err != nil {
			b.Fatal(err)
		}
		c.released(3, 1) // as this side's Release would
		msg.ResetReadLimit(ParamsTraversalFactor*frameWords(msg) + c.guard.g.MaxTraversalWords)
	}
}

func BenchmarkNoGuard(b *testing.B) {
	msg := subscribeCall(b)
	b.ReportAllocs()
	for b.Loop() {
		rm, err := rpccp.ReadRootMessage(msg)
		if err != nil {
			b.Fatal(err)
		}
		if rm.Which() == rpccp.Message_Which_call {
			call, _ := rm.Call()
			_ = call.QuestionId()
		}
	}
}

type nopRWC struct{}

func (nopRWC) Read([]byte) (int, error)    { return 0, nil }
func (nopRWC) Write(p []byte) (int, error) { return len(p), nil }
func (nopRWC) Close() error                { return nil }
