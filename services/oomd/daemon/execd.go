package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/oomd/kernel"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// ExecdTerminator adapts execd's Terminator capability (which only oomd's session can
// obtain) to the daemon. oomd has no other way to stop a process: it never signals a
// pid itself (security invariant 1; services/oomd's TestOomdBinaryLinksNoWayToSignal
// checks the linked binary).
type ExecdTerminator struct{ T oomdpb.Terminator }

var _ Terminator = ExecdTerminator{}

// Terminate sends the request and returns execd's refusal ("" when accepted).
func (e ExecdTerminator) Terminate(ctx context.Context, req policy.TerminateRequest) (string, error) {
	f, rel := e.T.Terminate(ctx, func(p oomdpb.Terminator_terminate_Params) error {
		p.SetInstance(req.Instance)
		p.SetDecision(req.Decision)
		if err := p.SetSubject(req.Subject); err != nil {
			return err
		}
		return p.SetReason(req.Reason)
	})
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return "", err
	}
	if r := res.Refusal(); r != oomdpb.Refusal_none {
		msg, _ := res.Detail()
		return fmt.Sprintf("%s: %s", r, truncate(msg, 200)), nil
	}
	return "", nil
}

// exitWatcher receives execd's exit reports.
type exitWatcher struct{ d *Daemon }

var _ oomdpb.ExitWatcher_Server = exitWatcher{}

// ExitWatcherClient returns the capability to give to Terminator.watchExits.
func (d *Daemon) ExitWatcherClient() oomdpb.ExitWatcher {
	w := exitWatcher{d: d}
	return oomdpb.ExitWatcher(rpcx.Recovering(oomdpb.ExitWatcher_Methods(nil, w), w, d.log))
}

func (w exitWatcher) Exited(ctx context.Context, call oomdpb.ExitWatcher_exited) error {
	r, err := call.Args().Report()
	if err != nil {
		return err
	}
	subject, err := r.Subject()
	if err != nil {
		return err
	}
	reason := fmt.Sprintf("exit=%d", r.ExitCode())
	if r.Signal() != 0 {
		reason = fmt.Sprintf("signal=%d", r.Signal())
	}
	if r.Killed() {
		reason += " sigkill-after-timeout"
	}
	w.d.log.Info("execd reported exit", zap.String("subject", subject), zap.Uint64("instance", r.Instance()),
		zap.Int32("pid", r.Pid()), zap.String("reason", reason), zap.Bool("terminated", r.Terminated()), zap.Uint64("decision", r.Decision()))
	durable, err := w.d.Exited(subject, r.Instance(), r.Decision(), reason)
	if err != nil {
		return err
	}
	// Answered once what the exit caused is durable: execd keeps a report that was not
	// answered (this oomd died first) and hands it to the next one, which completes the
	// decision it adopted from the journal (policy: phaseAdopted).
	return w.d.awaitDurable(ctx, durable)
}

// ServeBroker receives SubjectHandoffs from execd on its private broker socket until
// it closes. Each carries a socket whose peer is that subject; oomd serves a
// MemstatSink bound to the subject on it, so the subject's identity comes from execd
// and the kernel, never from anything the subject sends (security invariant 2).
func (d *Daemon) ServeBroker(ctx context.Context, broker *net.UnixConn) error {
	stop := context.AfterFunc(ctx, func() { broker.Close() })
	defer stop()
	for {
		msg, files, err := rpcx.RecvMsgFDs(broker)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("broker: %w", err)
		}
		if err := d.acceptHandoff(msg, files); err != nil {
			d.log.Warn("broker: refused handoff", zap.Error(err))
		}
	}
}

// handoffFds sorts the passed fds by what the handoff says each is. Unknown kinds and
// duplicates are refused: execd is trusted, but a confused handoff must not be guessed at.
func handoffFds(h oomdpb.SubjectHandoff, files []*os.File) (map[oomdpb.HandoffFd]*os.File, error) {
	out := make(map[oomdpb.HandoffFd]*os.File, len(files))
	if !h.HasFds() {
		if len(files) != 1 {
			return nil, fmt.Errorf("%d fds without a list of what they are", len(files))
		}
		out[oomdpb.HandoffFd_memstatSocket] = files[0]
		return out, nil
	}
	kinds, err := h.Fds()
	if err != nil {
		return nil, err
	}
	if kinds.Len() != len(files) {
		return nil, fmt.Errorf("the handoff lists %d fds but %d came", kinds.Len(), len(files))
	}
	for i := 0; i < kinds.Len(); i++ {
		k := kinds.At(i)
		if k > oomdpb.HandoffFd_page {
			return nil, fmt.Errorf("fd %d: unknown kind %d", i, k)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("fd %d: %s passed twice", i, k)
		}
		out[k] = files[i]
	}
	if out[oomdpb.HandoffFd_memstatSocket] == nil {
		return nil, errors.New("no memstat socket")
	}
	return out, nil
}

func (d *Daemon) acceptHandoff(msg *capnp.Message, files []*os.File) (err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
		}
	}()
	h, err := oomdpb.ReadRootSubjectHandoff(msg)
	if err != nil {
		return err
	}
	subject, err := h.Subject()
	if err == nil {
		err = policy.ValidateSubjectID(subject)
	}
	if err != nil {
		return fmt.Errorf("handoff subject: %w", err)
	}
	fds, err := handoffFds(h, files)
	if err != nil {
		return fmt.Errorf("handoff %s: %w", subject, err)
	}
	n, err := d.nLive()
	if err != nil {
		return fmt.Errorf("handoff %s: %w", subject, err)
	}
	if limit := maxSubjects(); n >= limit {
		return fmt.Errorf("handoff %s: %w: %d subjects watched (max %d: each holds up to 2 fds and a mapping; RLIMIT_NOFILE and vm.max_map_count bound them)",
			subject, ErrTooManySubjects, n, limit)
	}
	pref, err := wire.HandoffPreference(h)
	if err != nil {
		return fmt.Errorf("handoff %s: %w", subject, err)
	}
	s := &slot{subject: subject, instance: h.Instance(), critical: h.Critical(), injectable: h.Injectable(), preference: pref}
	mode := h.CgroupMode()
	if u := fds[oomdpb.HandoffFd_usage]; u != nil {
		kr, err := kernel.New(mode, u, fds[oomdpb.HandoffFd_memoryStat])
		if err != nil {
			return fmt.Errorf("handoff %s: %w", subject, err)
		}
		s.kernel = kr
	} else if st := fds[oomdpb.HandoffFd_memoryStat]; st != nil {
		st.Close()
	}
	if pf := fds[oomdpb.HandoffFd_page]; pf != nil {
		pr, err := page.NewReader(pf)
		pf.Close() // the mapping stays
		if err != nil {
			if s.kernel != nil {
				s.kernel.Close()
			}
			return fmt.Errorf("handoff %s: memstat page: %w", subject, err)
		}
		s.page = pr
	}
	files = nil // taken over (the deferred close must not touch them)
	defer func() {
		if err != nil { // the readers are ours until the subject is registered
			s.closeReaders()
		}
	}()

	sock := fds[oomdpb.HandoffFd_memstatSocket]
	log := d.log.With(zap.String("subject", subject))
	switch {
	case s.page != nil && !s.injectable:
		// The subject publishes on its page: nothing of oomd's RPC stack is reachable
		// from it (security invariant 8).
		sock.Close()
	case s.page != nil:
		// Injectable (tests only): the connection carries the subject's TestHook, oomd's
		// own bootstrap is nothing, and the guard admits only returns to oomd's calls.
		c, err := rpcx.FileToConn(sock)
		if err != nil {
			return fmt.Errorf("handoff %s: passed fd: %w", subject, err)
		}
		s.conn = rpcx.NewLimitedConn(c, capnp.Client{}, log, publisherLimits)
	default:
		// An execd without pages: the subject publishes over RPC (version 1).
		c, err := rpcx.FileToConn(sock)
		if err != nil {
			return fmt.Errorf("handoff %s: passed fd: %w", subject, err)
		}
		ss := &sinkServer{slot: s, dirty: &d.dirty}
		sink := rpcx.Recovering(oomdpb.MemstatSink_Methods(nil, ss), ss, d.log)
		registered := make(chan struct{}) // no sample is read before the subject is registered
		s.conn = rpcx.NewLimitedConn(gatedConn{Conn: c, open: registered}, sink, log, publisherLimits)
		defer close(registered)
	}
	d.log.Info("subject handed over", zap.String("subject", subject), zap.Uint64("instance", s.instance),
		zap.Int32("pid", h.Pid()), zap.Bool("critical", s.critical), zap.Stringer("cgroup", mode),
		zap.Bool("kernelReading", s.kernel != nil), zap.Bool("page", s.page != nil))
	if mode == kernel.ModeProc {
		log.Warn("contained by its /proc process tree only: weaker (a process that daemonises escapes it)")
	}
	if err := d.Register(s); err != nil {
		if s.conn != nil {
			s.conn.Close()
		}
		return fmt.Errorf("handoff %s: %w", subject, err)
	}
	return nil
}

// MaxSubjects bounds the subjects oomd watches: each holds one mapping (its memstat
// page) and up to two fds (its kernel reading). vm.max_map_count (65 530 by default)
// caps a process's mappings, and running into it makes the Go heap's next growth fatal;
// RLIMIT_NOFILE caps the fds (oomd raises its soft limit to the hard one at start).
// maxSubjects is the smaller of this and what the fd limit leaves after a reserve for
// sockets and files; a handoff beyond it is refused with a clear error.
const MaxSubjects = 20_000

// fdReserve is kept free of subjects' fds for sockets, journal and spill files.
const fdReserve = 512

func maxSubjects() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < 2*fdReserve {
		return MaxSubjects
	}
	return int(min(uint64(MaxSubjects), (rl.Cur-fdReserve)/2))
}

// ErrTooManySubjects refuses a handoff beyond maxSubjects.
var ErrTooManySubjects = errors.New("too many subjects")

func (d *Daemon) nLive() (int, error) {
	return query(d, func() int { return len(d.live) })
}

// publisherLimits are rpcx.PublisherLimits with the memstat guard (internal/guards) and a
// deadline for a started frame. No first-message deadline: a subject that never
// publishes (it does not link lib/memstat) is legitimate.
var publisherLimits = func() rpcx.Limits {
	lim := rpcx.PublisherLimits
	lim.Guard = guards.Publisher
	lim.FrameTimeout = rpcx.DefaultFrameTimeout
	return lim
}()
