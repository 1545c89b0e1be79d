package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
)

// DefaultRebootWatcherTimeout bounds each reboot watcher's answer during a teardown
// unless Config.RebootWatcherTimeout says otherwise (the 5 s a power manager gives its watchers).
const DefaultRebootWatcherTimeout = 5 * time.Second

// Teardown refusals. A teardown happens at most once per execd run.
var (
	ErrTeardownInProgress = errors.New("teardown already in progress: it is not started twice")
	ErrTeardownDone       = errors.New("teardown already done: it is not started twice")
	ErrStopping           = errors.New("execd is already stopping (it was asked to exit): no teardown")
)

// TeardownReport is what Teardown returns to the watchdog (oomdpb.TeardownReport).
type TeardownReport struct {
	Graceful         bool          // nothing needed SIGKILL and every reboot watcher answered in time
	Duration         time.Duration // from the request to the last service's exit
	NotStopped       []string      // services that needed SIGKILL, in stop order
	WatchersTimedOut []string      // subjects whose reboot watcher did not answer in time, sorted
}

// teardownState is the one teardown of this run; done is closed when it returned.
type teardownState struct {
	done chan struct{}
}

// rebootWatcher is the reboot watcher one subject registered (Session.watchReboot or,
// for the watchdog, SystemControl.watchReboot). It ends with that instance.
type rebootWatcher struct {
	instance uint64
	client   oomdpb.RebootWatcher
}

// namedWatcher is a reboot watcher to notify, with the subject it is reported as.
type namedWatcher struct {
	subject string
	client  oomdpb.RebootWatcher
}

// watchReboot registers w, a call's parameter (it keeps its own reference), as p's
// subject's reboot watcher, replacing an earlier one of that subject.
func (s *Supervisor) watchReboot(p *proc, w oomdpb.RebootWatcher) error {
	if !w.IsValid() {
		return errors.New("watchReboot: watcher is a null capability")
	}
	s.mu.Lock()
	var err error
	var old oomdpb.RebootWatcher
	switch {
	case s.teardown != nil:
		err = errors.New("watchReboot: a system teardown has started; the watchers were already told")
	case s.shuttingDown:
		err = errors.New("watchReboot: execd is stopping")
	case p.done:
		err = fmt.Errorf("watchReboot: %s instance %d has exited", p.svc.spec.ID, p.instance)
	default:
		if prev := s.rebootWatchers[p.svc.spec.ID]; prev != nil {
			old = prev.client
		}
		// Params are released when the call returns (docs/capnp-traps.md, trap 7).
		s.rebootWatchers[p.svc.spec.ID] = &rebootWatcher{instance: p.instance, client: w.AddRef()}
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	replaced := old.IsValid()
	old.Release()
	s.log.Info("reboot watcher registered", zap.String("subject", p.svc.spec.ID),
		zap.Uint64("instance", p.instance), zap.Bool("replaced", replaced))
	return nil
}

// dropRebootWatcher forgets p's reboot watcher when p registered it (p exited). s.mu
// must be held; the caller releases the returned client (a release sends a message).
func (s *Supervisor) dropRebootWatcher(p *proc) oomdpb.RebootWatcher {
	w := s.rebootWatchers[p.svc.spec.ID]
	if w == nil || w.instance != p.instance {
		return oomdpb.RebootWatcher{}
	}
	delete(s.rebootWatchers, p.svc.spec.ID)
	return w.client
}

// Teardown is the userspace side of a system reboot (the graceful teardown of docs/reliability/system-oom.md). It
// runs once per execd run, and never alongside Stop:
//
//  1. execd starts shutting down: terminate() is refused with shuttingDown, pending
//     restarts are cancelled and nothing is started or restarted any more;
//  2. every registered reboot watcher is told, all at once, each bounded by
//     Config.RebootWatcherTimeout; those that did not answer in time are reported;
//  3. the services are stopped level by level in manifest.TeardownLevels order (reverse
//     dependency order, the watchdog's dependencies last, the watchdog not at all). The
//     services of one level are stopped concurrently, each with SIGTERM, its own stop
//     timeout, then SIGKILL; the next level starts when every one of them has exited.
//
// The return is the acknowledgement. Teardown blocks for as long as that takes (bounded
// by the watcher timeout plus, per level, the largest stop timeout and the SIGKILL
// grace); it holds no lock while it waits. execd keeps running afterwards, with the
// watchdog: when the watchdog exits, Run returns its exit status.
func (s *Supervisor) Teardown(reason oomdpb.RebootReason) (TeardownReport, error) {
	start := time.Now()
	if reason > oomdpb.RebootReason_userRequest {
		reason = oomdpb.RebootReason_unknown // an enumerant newer than this execd
	}
	log := s.log.With(zap.Stringer("reason", reason))
	s.mu.Lock()
	if td := s.teardown; td != nil {
		s.mu.Unlock()
		select {
		case <-td.done:
			return TeardownReport{}, ErrTeardownDone
		default:
			return TeardownReport{}, ErrTeardownInProgress
		}
	}
	if s.shuttingDown {
		s.mu.Unlock()
		return TeardownReport{}, ErrStopping
	}
	td := &teardownState{done: make(chan struct{})}
	s.teardown = td
	defer close(td.done)
	s.beginShutdown()
	watchers := make([]namedWatcher, 0, len(s.rebootWatchers))
	for _, svc := range s.order { // a deterministic notification order, for the logs
		if w := s.rebootWatchers[svc.spec.ID]; w != nil {
			watchers = append(watchers, namedWatcher{svc.spec.ID, w.client.AddRef()})
		}
	}
	s.mu.Unlock()
	log.Info("teardown: started", zap.Int("rebootWatchers", len(watchers)))

	timedOut := s.notifyRebootWatchers(watchers, reason)

	var notStopped []string
	for i, level := range s.cfg.Manifest.TeardownLevels() {
		ids := make([]string, len(level))
		for j, spec := range level {
			ids[j] = spec.ID
		}
		log.Debug("teardown: stopping a level", zap.Int("level", i), zap.Strings("services", ids))
		killed := make([]bool, len(level))
		var wg sync.WaitGroup
		for j, spec := range level {
			wg.Go(func() { killed[j] = s.stopService(s.services[spec.ID]) })
		}
		wg.Wait()
		for j, k := range killed {
			if k {
				notStopped = append(notStopped, ids[j])
			}
		}
	}

	r := TeardownReport{
		Graceful:         len(notStopped) == 0 && len(timedOut) == 0,
		Duration:         time.Since(start),
		NotStopped:       notStopped,
		WatchersTimedOut: timedOut,
	}
	log.Info("teardown: done; the watchdog keeps running", zap.Bool("graceful", r.Graceful),
		zap.Duration("took", r.Duration), zap.Strings("notStopped", r.NotStopped),
		zap.Strings("watchersTimedOut", r.WatchersTimedOut))
	return r, nil
}

// notifyRebootWatchers calls every watcher at once, waits for each answer at most the
// watcher timeout, and returns the subjects of those that did not answer in time, in
// the order given. A watcher that failed (its process is gone) answered. It takes over
// the watchers' references.
func (s *Supervisor) notifyRebootWatchers(watchers []namedWatcher, reason oomdpb.RebootReason) []string {
	timeout := s.cfg.RebootWatcherTimeout
	late := make([]bool, len(watchers))
	var wg sync.WaitGroup
	for i, w := range watchers {
		wg.Go(func() {
			defer w.client.Release()
			log := s.log.With(zap.String("subject", w.subject))
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			fut, release := w.client.Rebooting(ctx, func(p oomdpb.RebootWatcher_rebooting_Params) error {
				p.SetReason(reason)
				return nil
			})
			defer release()
			// Waiting on ctx too: an answer that never comes must not hold the teardown
			// even if the connection cannot send the cancellation (docs/capnp-traps.md, trap 1).
			var err error
			select {
			case <-fut.Done():
				_, err = fut.Struct()
			case <-ctx.Done():
				err = ctx.Err()
			}
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				late[i] = true
				log.Warn("reboot watcher did not answer in time", zap.Duration("timeout", timeout))
			case err != nil:
				log.Info("reboot watcher failed; going on without it", zap.Error(err))
			default:
				log.Debug("reboot watcher answered")
			}
		})
	}
	wg.Wait()
	var timedOut []string
	for i, w := range watchers {
		if late[i] {
			timedOut = append(timedOut, w.subject)
		}
	}
	return timedOut
}

// systemControl is the SystemControl capability, handed out only through the watchdog's
// session; p is that watchdog instance.
type systemControl struct {
	s   *Supervisor
	p   *proc
	log *zap.Logger
}

var _ oomdpb.SystemControl_Server = (*systemControl)(nil)

func (sc *systemControl) Teardown(_ context.Context, call oomdpb.SystemControl_teardown) error {
	call.Go() // it blocks for the whole teardown; other calls on this object go on
	reason := call.Args().Reason()
	sc.log.Info("teardown requested", zap.Stringer("reason", reason))
	r, err := sc.s.Teardown(reason)
	if err != nil {
		sc.log.Warn("teardown refused", zap.Error(err))
		return fmt.Errorf("teardown: %w", err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	rep, err := res.NewReport()
	if err != nil {
		return err
	}
	rep.SetGraceful(r.Graceful)
	rep.SetTeardownMs(uint32(min(r.Duration.Milliseconds(), math.MaxUint32)))
	if err := setTextList(rep.NewNotStopped, r.NotStopped); err != nil {
		return err
	}
	return setTextList(rep.NewWatchersTimedOut, r.WatchersTimedOut)
}

func (sc *systemControl) WatchReboot(_ context.Context, call oomdpb.SystemControl_watchReboot) error {
	return sc.s.watchReboot(sc.p, call.Args().Watcher())
}

// setTextList fills a new text list of len(items) made by alloc.
func setTextList(alloc func(int32) (capnp.TextList, error), items []string) error {
	l, err := alloc(int32(len(items)))
	if err != nil {
		return err
	}
	for i, it := range items {
		if err := l.Set(i, it); err != nil {
			return err
		}
	}
	return nil
}
