// Package ctlclient is a client of oomd's control API, shared by the selftest, oomctl and
// the end-to-end tests. Its event subscription collects every pushed event, so a wait
// also sees events that arrived before it started; every wait has a deadline (ctx).
package ctlclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// Client is a control connection to oomd plus an event subscription whose pushes are
// collected, so waits can look at events that arrived before they started.
type Client struct {
	conn *rpc.Conn
	Ctl  oomdpb.Control
	sub  oomdpb.Subscription

	mu     sync.Mutex
	events []policy.Event
	wake   chan struct{}
}

// Dial connects once oomd's socket accepts, retrying with backoff until ctx ends (a
// client started right after oomd normally waits zero), and subscribes to its events.
func Dial(ctx context.Context, path string, log *zap.Logger) (*Client, error) {
	var lastErr error
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 500*time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			conn, boot, err := rpcx.Dial(ctx, path, log)
			if err == nil {
				c := &Client{conn: conn, Ctl: oomdpb.Control(boot), wake: make(chan struct{}, 1)}
				if err := c.subscribe(ctx); err != nil {
					c.Close()
					return nil, err
				}
				return c, nil
			}
			lastErr = err
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to oomd at %s: %w (last error: %v)", path, ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
	}
}

// Close ends the subscription and the connection.
func (c *Client) Close() {
	c.sub.Release()
	c.Ctl.Release()
	c.conn.Close()
}

type collector struct{ c *Client }

func (k collector) Push(_ context.Context, call oomdpb.EventSubscriber_push) error {
	evs, _, err := wire.ReadEventBatch(call.Args())
	if err != nil {
		return err
	}
	k.c.mu.Lock()
	k.c.events = append(k.c.events, evs...)
	k.c.mu.Unlock()
	select {
	case k.c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *Client) subscribe(ctx context.Context) error {
	f, rel := c.Ctl.Subscribe(ctx, func(p oomdpb.Control_subscribe_Params) error {
		p.SetSinceSeq(0)
		return p.SetSubscriber(oomdpb.EventSubscriber_ServerToClient(collector{c}))
	})
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return fmt.Errorf("subscribe to oomd events: %w", err)
	}
	c.sub = res.Subscription().AddRef()
	return nil
}

// IsKind matches events of one kind (by name, e.g. "killed") about one subject.
func IsKind(subject, kind string) func(policy.Event) bool {
	return func(e policy.Event) bool { return e.Subject == subject && e.Kind.String() == kind }
}

// WaitEvent returns the first event (from the start of the subscription) matching pred.
func (c *Client) WaitEvent(ctx context.Context, what string, pred func(policy.Event) bool) (policy.Event, error) {
	for {
		c.mu.Lock()
		i := slices.IndexFunc(c.events, pred)
		var e policy.Event
		if i >= 0 {
			e = c.events[i]
		}
		c.mu.Unlock()
		if i >= 0 {
			return e, nil
		}
		select {
		case <-ctx.Done():
			return e, fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-c.conn.Done():
			return e, fmt.Errorf("waiting for %s: oomd connection closed", what)
		case <-c.wake:
		}
	}
}

// CountKind counts matching events in oomd's ring (not just the subscription).
func (c *Client) CountKind(ctx context.Context, subject, kind string) (int, error) {
	n := 0
	match := IsKind(subject, kind)
	err := pages(0, func(since uint64) ([]policy.Event, uint64, error) {
		evs, next, _, err := c.ReadEvents(ctx, since, wire.MaxPage)
		return evs, next, err
	}, func(evs []policy.Event) bool {
		for _, e := range evs {
			if match(e) {
				n++
			}
		}
		return true
	})
	return n, err
}

// UpdatePolicy reads the policy in force, lets edit change it, and sets it back as a
// compare-and-set: a concurrent change makes it fail rather than be overwritten.
func (c *Client) UpdatePolicy(ctx context.Context, edit func(*policy.Policy)) error {
	p, v, err := c.GetPolicy(ctx)
	if err != nil {
		return err
	}
	edit(&p)
	_, err = c.SetPolicyIf(ctx, p, v)
	return err
}

// Inject asks oomd to make app's test hook allocate n more bytes.
func (c *Client) Inject(ctx context.Context, app string, n uint64) error {
	f, rel := c.Ctl.Inject(ctx, func(p oomdpb.Control_inject_Params) error {
		p.SetBytes(n)
		return p.SetAppId(app)
	})
	defer rel()
	if _, err := f.Struct(); err != nil {
		if msg := err.Error(); strings.Contains(msg, "connection closed") || strings.Contains(msg, "disconnected") {
			// The hog allocated, published and was killed before its answer got out:
			// the kill won the race with the reply. The events say what happened.
			return fmt.Errorf("inject %d bytes into %s: %w: %w", n, app, ErrSubjectGone, err)
		}
		return fmt.Errorf("inject %d bytes into %s: %w", n, app, err)
	}
	return nil
}

// ErrSubjectGone: the subject's connection closed before it answered (it may have been
// killed for what the call made it do).
var ErrSubjectGone = errors.New("subject gone before it answered")

// Counters reads the sample counters and the tick from oomd's status.
func (c *Client) Counters(ctx context.Context) (rejected, accepted, tick uint64, err error) {
	st, err := c.Status(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	return st.RejectedSamples, st.AcceptedSamples, st.Tick, nil
}

// WaitTicks returns once oomd's core has advanced n ticks, polling its status.
func (c *Client) WaitTicks(ctx context.Context, n uint64) error {
	_, _, start, err := c.Counters(ctx)
	if err != nil {
		return err
	}
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d ticks: %w", n, ctx.Err())
		case <-t.C:
		}
		_, _, now, err := c.Counters(ctx)
		if err != nil {
			return err
		}
		if now >= start+n {
			return nil
		}
	}
}

// SubjectBytes is a subject's latest accepted usage from oomd's status.
func (c *Client) SubjectBytes(ctx context.Context, subject string) (uint64, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return 0, err
	}
	for _, s := range st.Subjects {
		if s.Subject == subject {
			return s.Bytes, nil
		}
	}
	return 0, fmt.Errorf("status: no subject %q", subject)
}

// AuditHas checks that logd durably holds the kill decision's audit record.
func (c *Client) AuditHas(ctx context.Context, subject string, decision uint64) error {
	_, err := c.FindAudit(ctx, func(r policy.AuditRecord) bool {
		return r.Subject == subject && r.Decision == decision && r.Kind == policy.EventKillDecided
	})
	if err != nil {
		return fmt.Errorf("killDecided record of %s, decision %d: %w", subject, decision, err)
	}
	return nil
}

// FindAudit returns the first journal entry whose record matches, reading every page.
func (c *Client) FindAudit(ctx context.Context, match func(policy.AuditRecord) bool) (wire.JournalEntry, error) {
	var found *wire.JournalEntry
	err := pages(0, func(since uint64) ([]wire.JournalEntry, uint64, error) {
		entries, next, _, err := c.ReadAudit(ctx, since, wire.MaxPage)
		return entries, next, err
	}, func(entries []wire.JournalEntry) bool {
		for i := range entries {
			if match(entries[i].Record) {
				found = &entries[i]
				return false
			}
		}
		return true
	})
	if err != nil {
		return wire.JournalEntry{}, err
	}
	if found == nil {
		return wire.JournalEntry{}, errors.New("audit: no matching record in logd's journal")
	}
	return *found, nil
}

// Events returns a copy of every event pushed so far.
func (c *Client) Events() []policy.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// Done is closed when the connection to oomd ends.
func (c *Client) Done() <-chan struct{} { return c.conn.Done() }
