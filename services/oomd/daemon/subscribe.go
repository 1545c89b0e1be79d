package daemon

import (
	"context"
	"sync"

	"capnproto.org/go/capnp/v3/flowcontrol"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/wire"
)

// Each subscriber is served by its own goroutine that reads the ring from its own
// position. A slow subscriber therefore never holds events in memory (the ring is the
// only buffer) and never delays anyone else; when the ring overwrites what it has not
// read yet, its next push reports how many it missed.
const (
	subscriberWindow = 256 << 10 // bytes in flight to one subscriber
	subscriberBatch  = 64        // events per push
	maxSubscribers   = 64
)

type subscriber struct {
	client oomdpb.EventSubscriber
	next   uint64
	wake   chan struct{}
	cancel context.CancelFunc
}

type subscribers struct {
	mu   sync.Mutex
	list []*subscriber
}

func (s *subscribers) add(sub *subscriber) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) >= maxSubscribers {
		return false
	}
	s.list = append(s.list, sub)
	return true
}

func (s *subscribers) remove(sub *subscriber) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.list {
		if x == sub {
			s.list = append(s.list[:i], s.list[i+1:]...)
			return
		}
	}
}

func (s *subscribers) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.list {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

func (s *subscribers) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.list {
		sub.cancel()
	}
}

// subscribe starts pushing events after sinceSeq to client. The returned cancel ends
// the subscription; it also ends when a push fails (the subscriber went away).
func (d *Daemon) subscribe(client oomdpb.EventSubscriber, sinceSeq uint64) (context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(d.ctx)
	client.SetFlowLimiter(flowcontrol.NewFixedLimiter(subscriberWindow))
	sub := &subscriber{client: client, next: sinceSeq, wake: make(chan struct{}, 1), cancel: cancel}
	if !d.subs.add(sub) {
		cancel()
		client.Release()
		return nil, errTooManySubscribers
	}
	sub.wake <- struct{}{}
	go d.serveSubscriber(ctx, sub)
	return cancel, nil
}

func (d *Daemon) serveSubscriber(ctx context.Context, sub *subscriber) {
	defer func() {
		sub.cancel()
		d.subs.remove(sub)
		sub.client.Release()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.wake:
		}
		for {
			evs, next, missed, err := d.events(sub.next, subscriberBatch)
			if err != nil {
				return // the loop has ended
			}
			if len(evs) == 0 && missed == 0 {
				break
			}
			err = sub.client.Push(ctx, func(p oomdpb.EventSubscriber_push_Params) error {
				return wire.SetEventBatch(p, evs, missed)
			})
			if err != nil {
				d.log.Debug("subscriber gone", zap.Error(err))
				return
			}
			sub.next = next
		}
	}
}

// subscription is the capability a subscriber holds; releasing it ends the push loop.
type subscription struct{ cancel context.CancelFunc }

func (s *subscription) Shutdown() { s.cancel() }

// newSubscription is the handle a subscribe or watchLevels call returns.
func newSubscription(cancel context.CancelFunc) oomdpb.Subscription {
	s := &subscription{cancel: cancel}
	return oomdpb.Subscription(rpcx.Recovering(oomdpb.Subscription_Methods(nil, s), s, nil))
}
