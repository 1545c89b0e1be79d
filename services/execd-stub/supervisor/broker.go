package supervisor

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// handoffWriteTimeout bounds one sendmsg to the watchdog; a watchdog that does not read
// its broker socket for this long loses the connection (its next instance gets the
// pending handoffs).
const handoffWriteTimeout = 5 * time.Second

// handoff is one SubjectHandoff waiting to be sent with the watchdog's end of a child's
// memstat socket.
type handoff struct {
	p          *proc
	subject    string
	instance   uint64
	pid        int32
	critical   bool
	injectable bool
	file       *os.File

	inflight bool // being sent; only the sender closes file then
	gone     bool // the child exited; drop instead of retrying
}

// broker sends handoffs to the current watchdog instance, in spawn order, from its own
// goroutine so a slow watchdog never blocks spawning. Handoffs queue while no watchdog
// runs; the queue holds only live children (an exited child's handoff is dropped), so it
// is bounded by the manifest.
type broker struct {
	log *zap.Logger

	mu       sync.Mutex
	conn     *net.UnixConn
	instance uint64 // watchdog instance that conn belongs to
	pending  []*handoff
	wake     chan struct{}
}

func newBroker(log *zap.Logger) *broker {
	return &broker{log: log, wake: make(chan struct{}, 1)}
}

func (b *broker) nudge() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// attach makes c (execd's end of the broker socket of watchdog instance) the target.
func (b *broker) attach(c *net.UnixConn, instance uint64) {
	b.mu.Lock()
	if b.conn != nil {
		b.conn.Close()
	}
	b.conn, b.instance = c, instance
	b.mu.Unlock()
	b.nudge()
}

// detach drops the broker connection of a watchdog instance that exited.
func (b *broker) detach(instance uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil && b.instance == instance {
		b.conn.Close()
		b.conn = nil
	}
}

func (b *broker) enqueue(h *handoff) {
	b.mu.Lock()
	b.pending = append(b.pending, h)
	b.mu.Unlock()
	b.nudge()
}

// forget drops p's handoff if it was not sent yet.
func (b *broker) forget(p *proc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = slices.DeleteFunc(b.pending, func(h *handoff) bool {
		if h.p != p {
			return false
		}
		h.gone = true
		if h.inflight {
			return false
		}
		h.file.Close()
		return true
	})
}

func (b *broker) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		}
		for b.sendOne() {
		}
	}
}

// sendOne sends the oldest pending handoff, and reports whether to continue.
func (b *broker) sendOne() bool {
	b.mu.Lock()
	if b.conn == nil || len(b.pending) == 0 {
		b.mu.Unlock()
		return false
	}
	h, c, wd := b.pending[0], b.conn, b.instance
	h.inflight = true
	b.mu.Unlock()

	err := sendHandoff(c, h)

	b.mu.Lock()
	defer b.mu.Unlock()
	h.inflight = false
	if err == nil || h.gone {
		b.pending = slices.DeleteFunc(b.pending, func(x *handoff) bool { return x == h })
		h.file.Close()
	}
	log := b.log.With(zap.String("subject", h.subject), zap.Uint64("instance", h.instance), zap.Int32("pid", h.pid))
	if err != nil {
		log.Warn("handoff to watchdog failed; dropping its broker connection", zap.Uint64("watchdogInstance", wd), zap.Error(err))
		if b.conn == c {
			b.conn.Close()
			b.conn = nil
		}
		return false
	}
	log.Info("handed memstat socket to watchdog")
	return true
}

func sendHandoff(c *net.UnixConn, h *handoff) error {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return err
	}
	ho, err := oomdpb.NewRootSubjectHandoff(seg)
	if err != nil {
		return err
	}
	if err := ho.SetSubject(h.subject); err != nil {
		return err
	}
	ho.SetInstance(h.instance)
	ho.SetPid(h.pid)
	ho.SetCritical(h.critical)
	ho.SetInjectable(h.injectable)
	if err := c.SetWriteDeadline(time.Now().Add(handoffWriteTimeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	return rpcx.SendMsgFD(c, msg, h.file)
}

// close closes the connection and every unsent socket.
func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		b.conn.Close()
		b.conn = nil
	}
	for _, h := range b.pending {
		h.file.Close()
	}
	b.pending = nil
}
