package rpcx

import (
	"errors"
	"fmt"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"go.uber.org/zap"
)

// A Guard is the subset of the Cap'n Proto RPC protocol one socket's peers legitimately
// need, as data. The limit codec checks every incoming message against it before
// go-capnp sees the message, and closes the connection on the first message outside it
// (one log line naming the rule). go-capnp v3.1.0-alpha.2 mishandles several message
// shapes that no client of ours sends (a promise resolved to itself spins the receive
// loop; a promise resolved to one of our own capabilities panics while lifting the
// embargo; a cap table or transform of millions of zero-sized elements is expanded in
// memory): the guard admits only what the socket's schema can use, so none of those
// shapes reach the library, whether or not it is ever fixed.
//
// Build one with DeriveGuard from the schema; the zero Guard rejects every call.
type Guard struct {
	// Name identifies the socket in log lines ("control", "logd", ...).
	Name string
	// Methods are the interfaces the peer may call on this side, by interface id, with
	// one entry per method ordinal: the bootstrap interface and every interface whose
	// capabilities this side hands out in results.
	Methods map[uint64][]Method
	// AllowReturn admits Return messages: only where this side calls the peer (a
	// capability the peer passed in, or the peer's bootstrap).
	AllowReturn bool
	// ReturnCaps bounds the cap table of a Return from the peer.
	ReturnCaps int
	// AllowPromiseCaps admits senderPromise, receiverHosted and receiverAnswer cap
	// descriptors in a call's params: only where some method takes a capability.
	AllowPromiseCaps bool
	// AllowResolve admits Resolve messages, for promises the peer sent, resolving to a
	// capability the peer hosts (never to a promise: cycles; never to one of ours: the
	// embargo path) or to an exception, each promise once.
	AllowResolve bool
	// AllowDisembargo admits Disembargo messages. go-capnp sends one only after a Resolve
	// from us that points back into the peer, or a Return from us whose pipelined
	// capability is the peer's own; no oomd server does either.
	AllowDisembargo bool
	// MaxTransformOps bounds a promised-answer transform (the deepest capability field
	// in the results of a served method).
	MaxTransformOps int
	// MaxTraversalWords bounds what the guard itself reads of one message (the
	// envelope: message, call or return, target, payload header, cap table). The
	// params are then readable up to ParamsTraversalFactor times the frame's size.
	MaxTraversalWords uint64
	// MaxDepth bounds pointer nesting in a message (capnp.Message.DepthLimit).
	MaxDepth uint
	// MaxQuestions bounds the peer's questions this side holds (answered or not, until
	// the peer's Finish). An honest go-capnp client finishes each answer ~250 ms after
	// its Return, so this must exceed what 250 ms of calls can reach.
	MaxQuestions int
	// MaxImports bounds distinct capabilities the peer has exported to this side and
	// this side still holds (the peer's exports).
	MaxImports int
}

// Method is what one method's params may carry.
type Method struct {
	Name string
	// Caps bounds the cap table of a call's params.
	Caps int
}

// Guard defaults used by DeriveGuard.
const (
	// DefaultGuardTraversalWords: the envelope of a legitimate message is well under
	// 100 words (a cap table of a few entries); a zero-sized-element list counts one
	// word per element, so a long one is refused at its pointer.
	DefaultGuardTraversalWords = 1024
	// ParamsTraversalFactor: after the guard, a message may be read up to this many
	// times its own size (handlers read params more than once; aliased pointers cost
	// their target each time).
	ParamsTraversalFactor = 8
	// DefaultGuardDepth: our deepest legitimate message nests about 8 pointers.
	DefaultGuardDepth = 24
	// DefaultMaxQuestions: at ~25k calls/s an honest client holds ~6k answers open.
	DefaultMaxQuestions = 8192
	// DefaultMaxImports: capabilities a peer may have passed in and not yet released.
	DefaultMaxImports = 64
)

// ErrGuard is wrapped by every *GuardError.
var ErrGuard = errors.New("protocol guard")

// GuardError names the rule an incoming message broke.
type GuardError struct {
	Rule   string
	Detail string
}

func (e *GuardError) Error() string {
	return fmt.Sprintf("protocol guard: rule %s: %s", e.Rule, e.Detail)
}

func (e *GuardError) Unwrap() error { return ErrGuard }

// The rules, as named in log lines and docs/reliability/protocol-guard.md.
const (
	RuleMalformed     = "malformed"
	RuleMessageKind   = "message-kind"
	RuleInterface     = "interface"
	RuleCapTable      = "cap-table"
	RuleCapKind       = "cap-kind"
	RuleTransform     = "transform"
	RuleResolve       = "resolve"
	RuleReturn        = "return"
	RuleSendResultsTo = "send-results-to"
	RuleQuestions     = "questions"
	RuleImports       = "imports"
	RuleFrameTimeout  = "frame-timeout"
)

func violation(rule, format string, args ...any) *GuardError {
	return &GuardError{Rule: rule, Detail: fmt.Sprintf(format, args...)}
}

// importEntry is one capability the peer exported to this side.
type importEntry struct {
	refs     uint32
	promise  bool
	resolved bool
}

// guardState is a connection's view of what the guard needs to remember: the peer's
// exports this side holds. Guarded by limitCodec.mu.
type guardState struct {
	g       *Guard
	imports map[uint32]importEntry
}

func newGuardState(g *Guard) *guardState {
	return &guardState{g: g, imports: make(map[uint32]importEntry)}
}

// check inspects one message. The caller holds no lock; check takes mu for the
// import table.
func (c *limitCodec) check(rm rpccp.Message) error {
	g := c.guard.g
	switch w := rm.Which(); w {
	case rpccp.Message_Which_call:
		call, err := rm.Call()
		if err != nil {
			return violation(RuleMalformed, "call: %v", err)
		}
		return c.checkCall(g, call)
	case rpccp.Message_Which_bootstrap, rpccp.Message_Which_finish, rpccp.Message_Which_release,
		rpccp.Message_Which_abort:
		return nil
	case rpccp.Message_Which_return:
		if !g.AllowReturn {
			return violation(RuleMessageKind, "return: this side never calls the peer")
		}
		ret, err := rm.Return()
		if err != nil {
			return violation(RuleMalformed, "return: %v", err)
		}
		return c.checkReturn(g, ret)
	case rpccp.Message_Which_resolve:
		if !g.AllowResolve {
			return violation(RuleMessageKind, "resolve: no method of this socket takes a capability")
		}
		res, err := rm.Resolve()
		if err != nil {
			return violation(RuleMalformed, "resolve: %v", err)
		}
		return c.checkResolve(res)
	case rpccp.Message_Which_disembargo:
		if !g.AllowDisembargo {
			return violation(RuleMessageKind, "disembargo: this side never sends what it answers")
		}
		return nil
	default:
		return violation(RuleMessageKind, "%v", w)
	}
}

func (c *limitCodec) checkCall(g *Guard, call rpccp.Call) error {
	methods, ok := g.Methods[call.InterfaceId()]
	if !ok {
		return violation(RuleInterface, "interface %#x is not served here", call.InterfaceId())
	}
	mid := call.MethodId()
	if int(mid) >= len(methods) {
		return violation(RuleInterface, "interface %#x has no method @%d", call.InterfaceId(), mid)
	}
	m := methods[mid]
	if w := call.SendResultsTo().Which(); w != rpccp.Call_sendResultsTo_Which_caller {
		return violation(RuleSendResultsTo, "%s: results to %v", m.Name, w)
	}
	tgt, err := call.Target()
	if err != nil {
		return violation(RuleMalformed, "%s: target: %v", m.Name, err)
	}
	switch tgt.Which() {
	case rpccp.MessageTarget_Which_importedCap:
	case rpccp.MessageTarget_Which_promisedAnswer:
		pa, err := tgt.PromisedAnswer()
		if err != nil {
			return violation(RuleMalformed, "%s: target: %v", m.Name, err)
		}
		if err := checkTransform(g, pa); err != nil {
			return err
		}
	default:
		return violation(RuleMalformed, "%s: target %v", m.Name, tgt.Which())
	}
	p, err := call.Params()
	if err != nil {
		return violation(RuleMalformed, "%s: params: %v", m.Name, err)
	}
	return c.checkPayload(g, p, m.Caps, m.Name, g.AllowPromiseCaps)
}

func (c *limitCodec) checkReturn(g *Guard, ret rpccp.Return) error {
	switch w := ret.Which(); w {
	case rpccp.Return_Which_results:
		p, err := ret.Results()
		if err != nil {
			return violation(RuleMalformed, "return: results: %v", err)
		}
		return c.checkPayload(g, p, g.ReturnCaps, "return", false)
	case rpccp.Return_Which_exception, rpccp.Return_Which_canceled:
		return nil
	default:
		return violation(RuleReturn, "return: %v", w)
	}
}

// checkTransform bounds a promised answer's transform. The list's length is read from
// its pointer before any element is, so a list of millions of zero-sized elements costs
// one word here.
func checkTransform(g *Guard, pa rpccp.PromisedAnswer) error {
	ops, err := pa.Transform()
	if err != nil {
		return violation(RuleTransform, "transform: %v", err)
	}
	if n := ops.Len(); n > g.MaxTransformOps {
		return violation(RuleTransform, "transform of %d ops (at most %d)", n, g.MaxTransformOps)
	}
	for i := range ops.Len() {
		switch w := ops.At(i).Which(); w {
		case rpccp.PromisedAnswer_Op_Which_noop, rpccp.PromisedAnswer_Op_Which_getPointerField:
		default:
			return violation(RuleTransform, "transform op %v", w)
		}
	}
	return nil
}

// checkPayload bounds a payload's cap table (its length first) and admits each
// descriptor kind the socket can use; it records the peer's exports.
func (c *limitCodec) checkPayload(g *Guard, p rpccp.Payload, maxCaps int, what string, promises bool) error {
	tab, err := p.CapTable()
	if err != nil {
		return violation(RuleCapTable, "%s: cap table: %v", what, err)
	}
	n := tab.Len()
	if n == 0 {
		return nil
	}
	if n > maxCaps {
		return violation(RuleCapTable, "%s: %d capabilities (at most %d)", what, n, maxCaps)
	}
	for i := range n {
		d := tab.At(i)
		switch w := d.Which(); w {
		case rpccp.CapDescriptor_Which_none:
		case rpccp.CapDescriptor_Which_senderHosted:
			if err := c.imported(d.SenderHosted(), false); err != nil {
				return err
			}
		case rpccp.CapDescriptor_Which_senderPromise:
			if !promises {
				return violation(RuleCapKind, "%s: a capability promise where none is needed", what)
			}
			if err := c.imported(d.SenderPromise(), true); err != nil {
				return err
			}
		case rpccp.CapDescriptor_Which_receiverHosted:
			if !promises {
				return violation(RuleCapKind, "%s: our own capability passed back where none is needed", what)
			}
		case rpccp.CapDescriptor_Which_receiverAnswer:
			if !promises {
				return violation(RuleCapKind, "%s: a promised answer passed back where none is needed", what)
			}
			pa, err := d.ReceiverAnswer()
			if err != nil {
				return violation(RuleMalformed, "%s: receiver answer: %v", what, err)
			}
			if err := checkTransform(g, pa); err != nil {
				return err
			}
		default:
			return violation(RuleCapKind, "%s: cap descriptor %v", what, w)
		}
	}
	return nil
}

// imported notes that the peer exported id to this side.
func (c *limitCodec) imported(id uint32, promise bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.guard
	e, ok := st.imports[id]
	if !ok {
		if len(st.imports) >= st.g.MaxImports {
			return violation(RuleImports, "the peer exported %d capabilities still held here (at most %d)", len(st.imports), st.g.MaxImports)
		}
		e.promise = promise
	} else if promise != e.promise {
		return violation(RuleCapKind, "export %d sent as both a promise and a capability", id)
	}
	e.refs++
	st.imports[id] = e
	return nil
}

// checkResolve admits a Resolve for a promise the peer sent and has not resolved yet,
// to an exception or to a capability the peer hosts that is not itself a promise.
func (c *limitCodec) checkResolve(res rpccp.Resolve) error {
	id := res.PromiseId()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.guard.imports[id]
	switch {
	case !ok || !e.promise:
		return violation(RuleResolve, "resolve of %d, which is no promise the peer sent", id)
	case e.resolved:
		return violation(RuleResolve, "promise %d resolved twice", id)
	}
	switch res.Which() {
	case rpccp.Resolve_Which_exception:
	case rpccp.Resolve_Which_cap:
		d, err := res.Cap()
		if err != nil {
			return violation(RuleMalformed, "resolve: %v", err)
		}
		if d.Which() != rpccp.CapDescriptor_Which_senderHosted {
			return violation(RuleResolve, "promise %d resolved to %v (only to a capability the peer hosts)", id, d.Which())
		}
		to := d.SenderHosted()
		if t, ok := c.guard.imports[to]; to == id || ok && t.promise {
			return violation(RuleResolve, "promise %d resolved to promise %d", id, to)
		}
		if _, ok := c.guard.imports[to]; !ok && len(c.guard.imports) >= c.guard.g.MaxImports {
			return violation(RuleImports, "the peer exported %d capabilities still held here (at most %d)", len(c.guard.imports), c.guard.g.MaxImports)
		}
		t := c.guard.imports[to]
		t.refs++
		c.guard.imports[to] = t
	default:
		return violation(RuleResolve, "resolve %v", res.Which())
	}
	e.resolved = true
	c.guard.imports[id] = e
	return nil
}

// released notes this side's Release of n references to the peer's export id.
func (c *limitCodec) released(id, n uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.guard.imports[id]
	if !ok {
		return
	}
	if n >= e.refs {
		delete(c.guard.imports, id)
		return
	}
	e.refs -= n
	c.guard.imports[id] = e
}

// frameWords is the size of m in words.
func frameWords(m *capnp.Message) uint64 {
	var n uint64
	for i := range m.NumSegments() {
		seg, err := m.Segment(capnp.SegmentID(i))
		if err != nil {
			break
		}
		n += uint64(len(seg.Data()) / 8)
	}
	return n
}

// logGate rate-limits the warnings of one socket's connections: a peer that reconnects
// in a loop to be refused or closed must not flood the log. At most one line per
// interval; the next line says how many were suppressed.
type logGate struct {
	interval time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newLogGate(interval time.Duration) *logGate { return &logGate{interval: interval} }

func (g *logGate) warn(log *zap.Logger, msg string, fields ...zap.Field) {
	g.mu.Lock()
	now := time.Now()
	if !g.last.IsZero() && now.Sub(g.last) < g.interval {
		g.suppressed++
		g.mu.Unlock()
		return
	}
	g.last = now
	n := g.suppressed
	g.suppressed = 0
	g.mu.Unlock()
	if n > 0 {
		fields = append(fields, zap.Int("suppressed", n))
	}
	log.Warn(msg, fields...)
}
