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
	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/execd-stub/cgroup"
)

// handoffWriteTimeout bounds one sendmsg to the watchdog; a watchdog that does not read
// its broker socket for this long loses the connection (its next instance is served
// afresh).
const handoffWriteTimeout = 5 * time.Second

// deliveryWriteTimeout bounds one sendmsg on a child's delivery socket. A child that
// never reads its deliveries (it does not publish memstat) fills its queue only after
// hundreds of watchdog restarts; then it simply gets no newer connection.
const deliveryWriteTimeout = time.Second

// member is a live child (not the watchdog) that the broker keeps connected to the
// current watchdog instance.
type member struct {
	p          *proc
	subject    string
	instance   uint64
	pid        int32
	critical   bool
	injectable bool
	preference oomdpb.Preference
	delivery   *net.UnixConn // execd's end of the child's delivery socket (OOMD_MEMSTAT_FD)
	group      *cgroup.Group // the child's cgroup: a read-only usage fd goes with each handoff
	page       *os.File      // the child's memstat page (read-write; a read-only fd is handed over)

	servedBy uint64 // watchdog instance that holds this child's current connection; 0 none
	busy     bool   // being served; only the server closes delivery then
	gone     bool   // the child exited; drop once no longer busy
}

// release closes what execd kept for m: its delivery socket and its page.
func (m *member) release() {
	m.delivery.Close()
	if m.page != nil {
		m.page.Close()
	}
}

// broker connects every live child to the current watchdog instance. For each child
// not yet served by that instance it creates a stream socketpair, sends one end to the
// watchdog with a SubjectHandoff (broker socket) and, once that succeeded, passes the
// other end to the child on its delivery socket. A new watchdog instance (a restart)
// therefore gets a fresh connection to every live child, and each child's memstat
// publisher reconnects on receipt. Serving runs in spawn order on the broker's own
// goroutine, so a slow watchdog or child never blocks spawning. The member list holds
// only live children, so it is bounded by the manifest. execd keeps no copy of a
// handed-over socket: both ends are closed in execd once passed on.
type broker struct {
	log *zap.Logger

	mu       sync.Mutex
	conn     *net.UnixConn
	instance uint64 // watchdog instance that conn belongs to
	members  []*member
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

// add registers a new child; it takes over m.delivery.
func (b *broker) add(m *member) {
	b.mu.Lock()
	b.members = append(b.members, m)
	b.mu.Unlock()
	b.nudge()
}

// forget drops p (it exited) and closes its delivery socket.
func (b *broker) forget(p *proc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.members = slices.DeleteFunc(b.members, func(m *member) bool {
		if m.p != p {
			return false
		}
		m.gone = true
		if m.busy {
			return false // serveOne closes it
		}
		m.release()
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
		for b.serveOne() {
		}
	}
}

// serveOne connects the oldest child not yet served by the current watchdog instance,
// and reports whether to continue.
func (b *broker) serveOne() bool {
	b.mu.Lock()
	if b.conn == nil {
		b.mu.Unlock()
		return false
	}
	var m *member
	for _, x := range b.members {
		if !x.gone && x.servedBy != b.instance {
			m = x
			break
		}
	}
	if m == nil {
		b.mu.Unlock()
		return false
	}
	c, wd := b.conn, b.instance
	m.busy = true
	b.mu.Unlock()

	log := b.log.With(zap.String("subject", m.subject), zap.Uint64("instance", m.instance), zap.Int32("pid", m.pid),
		zap.Uint64("watchdogInstance", wd))
	handErr, deliverErr := b.connect(c, m)

	b.mu.Lock()
	defer b.mu.Unlock()
	m.busy = false
	if handErr == nil {
		// Served, even if the delivery failed: the child gets no retry from this
		// instance (the watchdog sees that connection's peer closed at once).
		m.servedBy = wd
	}
	if m.gone {
		m.release()
		b.members = slices.DeleteFunc(b.members, func(x *member) bool { return x == m })
	}
	if handErr != nil {
		log.Warn("handoff to watchdog failed; dropping its broker connection", zap.Error(handErr))
		if b.conn == c {
			b.conn.Close()
			b.conn = nil
		}
		return false
	}
	if deliverErr != nil {
		log.Warn("could not pass the memstat connection to the child", zap.Error(deliverErr))
	} else {
		log.Info("connected child's memstat to the watchdog")
	}
	return true
}

// connect makes a socketpair, hands one end to the watchdog and then delivers the other
// to the child. Both ends are closed in execd afterwards.
func (b *broker) connect(c *net.UnixConn, m *member) (handErr, deliverErr error) {
	wdEnd, childEnd, err := rpcx.Socketpair()
	if err != nil {
		return fmt.Errorf("memstat socket: %w", err), nil
	}
	defer wdEnd.Close()
	defer childEnd.Close()
	files := []*os.File{wdEnd}
	kinds := []oomdpb.HandoffFd{oomdpb.HandoffFd_memstatSocket}
	mode := oomdpb.CgroupMode_none
	if m.group != nil {
		// Fresh read-only fds per handoff: each watchdog instance holds its own, and they
		// grant reading one number, no authority over the cgroup.
		if u, err := m.group.OpenUsage(); err != nil {
			b.log.Warn("no kernel reading for this subject", zap.String("subject", m.subject), zap.String("cgroup", m.group.Path()), zap.Error(err))
		} else {
			defer u.Close()
			mode = oomdpb.CgroupMode(m.group.Mode())
			files = append(files, u.Usage)
			kinds = append(kinds, oomdpb.HandoffFd_usage)
			if u.Stat != nil {
				files = append(files, u.Stat)
				kinds = append(kinds, oomdpb.HandoffFd_memoryStat)
			}
		}
	}
	if m.page != nil {
		ro, err := page.ReadOnly(m.page)
		if err != nil {
			return fmt.Errorf("memstat page: %w", err), nil
		}
		defer ro.Close()
		files = append(files, ro)
		kinds = append(kinds, oomdpb.HandoffFd_page)
	}
	if err := sendHandoff(c, m, mode, kinds, files); err != nil {
		return err, nil
	}
	if err := m.delivery.SetWriteDeadline(time.Now().Add(deliveryWriteTimeout)); err != nil {
		return nil, fmt.Errorf("set deadline: %w", err)
	}
	return nil, rpcx.DeliverConn(m.delivery, childEnd)
}

func sendHandoff(c *net.UnixConn, m *member, mode oomdpb.CgroupMode, kinds []oomdpb.HandoffFd, files []*os.File) error {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return err
	}
	ho, err := oomdpb.NewRootSubjectHandoff(seg)
	if err != nil {
		return err
	}
	if err := ho.SetSubject(m.subject); err != nil {
		return err
	}
	ho.SetInstance(m.instance)
	ho.SetPid(m.pid)
	ho.SetCritical(m.critical)
	ho.SetInjectable(m.injectable)
	ho.SetPreference(m.preference)
	ho.SetCgroupMode(mode)
	fl, err := ho.NewFds(int32(len(kinds)))
	if err != nil {
		return err
	}
	for i, k := range kinds {
		fl.Set(i, k)
	}
	if err := c.SetWriteDeadline(time.Now().Add(handoffWriteTimeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	return rpcx.SendMsgFDs(c, msg, files...)
}

// close closes the watchdog connection and every child's delivery socket.
func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		b.conn.Close()
		b.conn = nil
	}
	for _, m := range b.members {
		if !m.busy {
			m.release()
		}
		m.gone = true
	}
	b.members = nil
}
