package rpcx

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"go.uber.org/zap"
)

// Limits bound what one peer can make this side of a connection hold.
//
// go-capnp (v3.1.0-alpha.2) has no receive-side flow control: every incoming call is
// queued for its server object without limit, its Return waits in an unbounded send
// queue until the socket takes it, and each answer stays in the connection's table
// until the peer sends Finish (upstream capnproto/go-capnp#194 lists a per-connection
// limit as future work; the C++ implementation has one, RpcSystem::setFlowLimit). A
// peer that writes call frames without reading grows the server by ~2.7 KB per call,
// measured in docs/perf.md. The codec below closes that gap under go-capnp, in the
// byte stream: it counts the questions (Call and Bootstrap messages) it hands to the
// rpc layer and the Return messages the rpc layer writes back for them, and watches the
// peer's Finish messages.
type Limits struct {
	// MaxUnreturned bounds incoming questions whose Return has not yet been written.
	// At the bound the reader holds the next question until one returns, so the
	// socket fills and the peer's writes block: backpressure, nothing dropped. A peer
	// that reads its Returns keeps going; one that never reads stops. 0: no bound.
	// Caveat (as for C++'s setFlowLimit): a handler that waits for a later message from
	// the same peer (the Return of a call back to it) is not released while the reader
	// holds a question; with MaxUnreturned such handlers outstanding the connection
	// stalls. logd's handlers block only on its disk and execd's never wait on their
	// caller. One of oomd's does: ExitWatcher.exited, held until what the exit caused
	// is durable, may wait for execd's Return to oomd's terminate call on the same
	// connection. execd makes at most one exited call at a time, far below the bound,
	// so the reader never holds that Return behind it.
	MaxUnreturned int
	// FinishOnReturn makes the codec hand the rpc layer a Finish for every call as soon
	// as its Return is written, and drop the peer's own Finish when it comes. go-capnp
	// otherwise keeps each answer, with its return message, until the peer's Finish: a
	// peer that never sends one grows the table without bound, and even an honest
	// go-capnp client sends its Finishes late (one goroutine per stream call releases
	// the answer; thousands lag behind under load). Only for connections on which
	// nothing is pipelined on a call's results, such as a MemstatSink whose one method
	// streams (empty results). Bootstrap answers are never finished early (clients
	// pipeline on them); more than maxOpenBootstraps unfinished ones close the
	// connection.
	FinishOnReturn bool
	// MaxMessageBytes bounds one frame (DefaultMaxMessageBytes if 0); a larger one
	// closes the connection.
	MaxMessageBytes uint64
	// Guard, if set, is checked on every incoming message (guard.go).
	Guard *Guard
	// FirstMessageTimeout bounds the time from the start of the connection to its first
	// complete frame (a peer that connects and sends nothing, or three bytes, is
	// closed). FrameTimeout bounds the time from a frame's first byte to its last. An
	// idle connection between frames is not bounded: control clients and logd's writer
	// legitimately sit idle for hours. 0: no deadline. Only for connections whose
	// reader has SetReadDeadline.
	FirstMessageTimeout time.Duration
	FrameTimeout        time.Duration

	logGate *logGate // shared by a Server's connections: rate-limits their log lines
}

// DefaultLimits apply to every connection made with NewConn: backpressure after 256
// unreturned calls, 1 MiB frames.
var DefaultLimits = Limits{MaxUnreturned: 256}

// PublisherLimits are for connections whose peer is an untrusted subject that only
// publishes memstat (oomd's brokered MemstatSink connections). A sample call is about
// 150 bytes, so 4 KiB frames leave ample room. What one such peer can make oomd hold is
// then about 64 frames of at most 4 KiB plus go-capnp's per-call state for them, and
// the returns of those 64 calls (docs/perf.md measures it).
var PublisherLimits = Limits{MaxUnreturned: 64, FinishOnReturn: true, MaxMessageBytes: 4 << 10}

// maxOpenBootstraps bounds Bootstrap answers without Finish under FinishOnReturn.
const maxOpenBootstraps = 8

// ErrTooManyBootstraps ends a connection whose peer keeps more than maxOpenBootstraps
// Bootstrap questions open.
var ErrTooManyBootstraps = errors.New("peer keeps too many bootstrap questions open")

// limitCodec is a transport.Codec that enforces Limits.
//
// It also does its own I/O batching, which costs nothing in bounds: reads go through
// a small buffer (one read syscall for several small frames instead of two per frame),
// and a frame up to maxGatherBytes is written with one write from a reused buffer.
// capnp.Encoder writes with writev only when the writer is a bare *net.UnixConn; any
// wrapper (oomd's gatedConn) would otherwise cost one write per segment plus one for
// the header.
type limitCodec struct {
	br  *bufio.Reader
	dl  deadliner // nil: no frame deadlines
	dec *capnp.Decoder
	enc *capnp.Encoder
	w   io.Writer
	c   io.Closer
	lim Limits
	log *zap.Logger

	wbuf []byte // Encode runs on go-capnp's one send goroutine

	mu         sync.Mutex
	cond       *sync.Cond
	open       map[uint32]answerState // questions received, not both returned and finished
	unreturned int
	bootstraps int      // open bootstrap questions
	finishes   []uint32 // calls returned under FinishOnReturn, to be finished on the peer's behalf
	closed     bool
	stalls     uint64      // times the reader held a question at the bound
	guard      *guardState // nil: no guard
	framed     atomic.Bool // a first complete frame arrived
	start      time.Time
}

type deadliner interface{ SetReadDeadline(time.Time) error }

type answerState uint8

const (
	returned answerState = 1 << iota
	finished
	bootstrap
)

func newLimitCodec(rwc io.ReadWriteCloser, lim Limits, log *zap.Logger) *limitCodec {
	if lim.MaxMessageBytes == 0 {
		lim.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if log == nil {
		log = zap.NewNop()
	}
	br := bufio.NewReaderSize(rwc, readBufferBytes)
	dec := capnp.NewDecoder(br)
	dec.MaxMessageSize = lim.MaxMessageBytes
	c := &limitCodec{br: br, dec: dec, enc: capnp.NewEncoder(rwc), w: rwc, c: rwc, lim: lim, log: log, open: make(map[uint32]answerState), start: time.Now()}
	if dl, ok := rwc.(deadliner); ok && (lim.FrameTimeout > 0 || lim.FirstMessageTimeout > 0) {
		c.dl = dl
	}
	if lim.Guard != nil {
		c.guard = newGuardState(lim.Guard)
	}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// readFrame reads the next frame. Until the first frame is complete the read is bounded
// by FirstMessageTimeout from the start; after that, waiting for a frame's first byte is
// not bounded, and the rest of the frame must follow within FrameTimeout.
func (c *limitCodec) readFrame() (*capnp.Message, error) {
	if c.dl == nil {
		m, err := c.dec.Decode()
		if err == nil {
			c.framed.Store(true)
		}
		return m, err
	}
	if !c.framed.Load() && c.lim.FirstMessageTimeout > 0 {
		c.dl.SetReadDeadline(c.start.Add(c.lim.FirstMessageTimeout))
	} else {
		if _, err := c.br.Peek(1); err != nil {
			return nil, err
		}
		if c.lim.FrameTimeout > 0 {
			c.dl.SetReadDeadline(time.Now().Add(c.lim.FrameTimeout))
		}
	}
	m, err := c.dec.Decode()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			rule := "the rest of a frame did not arrive in time"
			if !c.framed.Load() {
				rule = "no complete first message in time"
			}
			c.logf("protocol guard: closing connection", zap.String("rule", RuleFrameTimeout), zap.String("detail", rule))
		}
		return nil, err
	}
	c.framed.Store(true)
	c.dl.SetReadDeadline(time.Time{})
	return m, nil
}

func (c *limitCodec) hasFramed() bool { return c.framed.Load() }

// logf writes a Warn line, rate-limited per socket when the codec belongs to a Server.
func (c *limitCodec) logf(msg string, fields ...zap.Field) {
	if c.lim.Guard != nil {
		fields = append(fields, zap.String("socket", c.lim.Guard.Name))
	}
	if c.lim.logGate != nil {
		c.lim.logGate.warn(c.log, msg, fields...)
		return
	}
	c.log.Warn(msg, fields...)
}

// reject logs why the guard closes the connection and returns the error that closes it.
func (c *limitCodec) reject(err error) error {
	var ge *GuardError
	if errors.As(err, &ge) {
		c.logf("protocol guard: closing connection", zap.String("rule", ge.Rule), zap.String("detail", ge.Detail))
	}
	return err
}

// Decode returns the next message for the rpc layer: first any Finish owed on the
// peer's behalf, then the next frame. A question (Call or Bootstrap) is handed on only
// while fewer than MaxUnreturned are unreturned; until then this read, and so the
// socket, waits.
func (c *limitCodec) Decode() (*capnp.Message, error) {
	for {
		if m := c.owedFinish(); m != nil {
			return m, nil
		}
		m, err := c.readFrame()
		if err != nil {
			return nil, err
		}
		if c.guard != nil {
			m.DepthLimit = c.guard.g.MaxDepth
			m.ResetReadLimit(c.guard.g.MaxTraversalWords)
		}
		rm, err := rpccp.ReadRootMessage(m)
		if err != nil {
			if c.guard != nil {
				return nil, c.reject(violation(RuleMalformed, "%v", err))
			}
			return m, nil // the rpc layer reports it
		}
		if c.guard != nil {
			if err := c.check(rm); err != nil {
				return nil, c.reject(err)
			}
		}
		pass, err := c.account(rm)
		if err != nil {
			return nil, c.reject(err)
		}
		if !pass {
			continue
		}
		if c.guard != nil {
			m.ResetReadLimit(ParamsTraversalFactor*frameWords(m) + c.guard.g.MaxTraversalWords)
		}
		return m, nil
	}
}

// account does the bookkeeping of Limits for one incoming message and reports whether
// to pass it on.
func (c *limitCodec) account(rm rpccp.Message) (bool, error) {
	switch rm.Which() {
	case rpccp.Message_Which_call:
		call, err := rm.Call()
		if err != nil {
			return true, nil
		}
		if err := c.admit(call.QuestionId(), false); err != nil {
			return false, err
		}
	case rpccp.Message_Which_bootstrap:
		b, err := rm.Bootstrap()
		if err != nil {
			return true, nil
		}
		if err := c.admit(b.QuestionId(), true); err != nil {
			return false, err
		}
	case rpccp.Message_Which_finish:
		fin, err := rm.Finish()
		if err == nil && !c.finish(fin.QuestionId()) {
			return false, nil // already finished on the peer's behalf
		}
	}
	return true, nil
}

func (c *limitCodec) owedFinish() *capnp.Message {
	c.mu.Lock()
	if len(c.finishes) == 0 {
		c.mu.Unlock()
		return nil
	}
	qid := c.finishes[0]
	c.finishes = c.finishes[1:]
	if len(c.finishes) == 0 {
		c.finishes = c.finishes[:0:0] // let the backing array go
	}
	c.mu.Unlock()
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(make([]byte, 0, 64)))
	if err != nil {
		return nil
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		return nil
	}
	fin, err := m.NewFinish()
	if err != nil {
		return nil
	}
	fin.SetQuestionId(qid)
	fin.SetReleaseResultCaps(false) // the peer got the Return; its caps are its own now
	return msg
}

func (c *limitCodec) admit(qid uint32, boot bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.open[qid]; dup {
		return nil // a reused question id: the rpc layer rejects it
	}
	if boot && c.lim.FinishOnReturn && c.bootstraps >= maxOpenBootstraps {
		return fmt.Errorf("%w (%d)", ErrTooManyBootstraps, c.bootstraps)
	}
	if c.guard != nil && len(c.open) >= c.guard.g.MaxQuestions {
		return violation(RuleQuestions, "the peer holds %d questions open (at most %d)", len(c.open), c.guard.g.MaxQuestions)
	}
	if c.lim.MaxUnreturned > 0 && c.unreturned >= c.lim.MaxUnreturned {
		c.stalls++
		if c.stalls == 1 {
			c.log.Debug("peer reached the bound on unreturned calls; reading paused until one returns",
				zap.Int("unreturned", c.unreturned))
		}
		for !c.closed && c.unreturned >= c.lim.MaxUnreturned {
			c.cond.Wait()
		}
		if c.closed {
			return io.ErrClosedPipe
		}
	}
	var st answerState
	if boot {
		st = bootstrap
		c.bootstraps++
	}
	c.open[qid] = st
	c.unreturned++
	return nil
}

// finish notes the peer's Finish and reports whether to pass it on.
func (c *limitCodec) finish(qid uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.open[qid]
	if !ok {
		// Unknown: either finished on the peer's behalf (drop it) or a protocol error
		// the rpc layer should see.
		return !c.lim.FinishOnReturn
	}
	if st&returned != 0 {
		c.forget(qid, st)
		return true
	}
	c.open[qid] = st | finished
	return true
}

func (c *limitCodec) forget(qid uint32, st answerState) {
	delete(c.open, qid)
	if st&bootstrap != 0 {
		c.bootstraps--
	}
}

// Encode writes a frame. A Return (or an Unimplemented echoing a call) for a counted
// question is accounted before the write, so a peer that reads the Return and reuses
// its question id can never race the bookkeeping.
func (c *limitCodec) Encode(m *capnp.Message) error {
	if rm, err := rpccp.ReadRootMessage(m); err == nil {
		switch rm.Which() {
		case rpccp.Message_Which_return:
			if r, err := rm.Return(); err == nil {
				c.returned(r.AnswerId(), false)
			}
		case rpccp.Message_Which_unimplemented:
			if u, err := rm.Unimplemented(); err == nil && u.Which() == rpccp.Message_Which_call {
				if call, err := u.Call(); err == nil {
					c.returned(call.QuestionId(), true)
				}
			}
		case rpccp.Message_Which_release:
			if c.guard != nil {
				if r, err := rm.Release(); err == nil {
					c.released(r.Id(), r.ReferenceCount())
				}
			}
		}
	}
	return c.write(m)
}

const (
	// readBufferBytes is read ahead from the socket: at most this much per connection
	// sits in user space beyond what the rpc layer took.
	readBufferBytes = 4 << 10
	// maxGatherBytes: frames up to this size are copied into one buffer and written
	// with one write; larger ones go through capnp.Encoder.
	maxGatherBytes = 64 << 10
)

func (c *limitCodec) write(m *capnp.Message) error {
	nsegs := m.NumSegments()
	if nsegs < 1 || nsegs > 64 {
		return c.enc.Encode(m)
	}
	hdr := int((nsegs+1)*4+7) &^ 7 // segment count - 1, one size per segment, padded to a word
	size := hdr
	for i := range nsegs {
		seg, err := m.Segment(capnp.SegmentID(i))
		if err != nil {
			return c.enc.Encode(m)
		}
		size += len(seg.Data())
	}
	if size > maxGatherBytes {
		return c.enc.Encode(m)
	}
	b := append(c.wbuf[:0], make([]byte, hdr)...)
	binary.LittleEndian.PutUint32(b, uint32(nsegs-1))
	for i := range nsegs {
		seg, _ := m.Segment(capnp.SegmentID(i))
		d := seg.Data()
		binary.LittleEndian.PutUint32(b[4+4*i:], uint32(len(d)/8))
		b = append(b, d...)
	}
	c.wbuf = b
	_, err := c.w.Write(b)
	return err
}

func (c *limitCodec) returned(qid uint32, done bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.open[qid]
	if !ok || st&returned != 0 {
		return
	}
	c.unreturned--
	c.cond.Signal()
	switch {
	case done || st&finished != 0:
		c.forget(qid, st)
	case c.lim.FinishOnReturn && st&bootstrap == 0:
		c.forget(qid, st)
		c.finishes = append(c.finishes, qid)
	default:
		c.open[qid] = st | returned
	}
}

func (c *limitCodec) Close() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	return c.c.Close()
}

func transportFor(c *limitCodec) transport.Transport { return transport.New(c) }
