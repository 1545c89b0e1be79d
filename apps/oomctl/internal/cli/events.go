package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// pageFlags are the options of events and audit.
type pageFlags struct {
	since  uint64
	limit  uint64
	follow bool
}

func registerPageFlags(fs *flag.FlagSet, follow bool) *pageFlags {
	f := &pageFlags{}
	fs.Uint64Var(&f.since, "since", 0, "print entries with a sequence number above `N` (0: the oldest still held)")
	fs.Uint64Var(&f.limit, "limit", 0, "print at most `N` entries, then exit (0: no limit)")
	if follow {
		fs.BoolVar(&f.follow, "follow", false, "after the history, keep printing events as oomd publishes them until Ctrl-C or SIGTERM")
	}
	return f
}

// eventView is one event in --json. The names are the schema's; add, never rename.
type eventView struct {
	Seq      uint64 `json:"seq"`
	Tick     uint64 `json:"tick"`
	Kind     string `json:"kind"`
	Subject  string `json:"subject"`
	Bytes    uint64 `json:"bytes"`
	Limit    uint64 `json:"limit"`
	Decision uint64 `json:"decision"`
	Reason   string `json:"reason"`
	// WallTimeNs is when oomd published the event (Unix ns; 0 = unknown).
	WallTimeNs int64 `json:"wallTimeNs"`
}

// wallTime renders a wall time stamp for people: RFC 3339 in local time, to the
// millisecond ("-" when unknown).
func wallTime(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).Local().Format("2006-01-02T15:04:05.000Z07:00")
}

// missedView is the line printed in --json where entries were lost: oomd's ring (or
// logd's rotation) dropped them before they could be read. It has no "seq" key, which
// is how a script tells it from an entry.
type missedView struct {
	Missed uint64 `json:"missed"`
	// EarlierRun is how many of Missed were numbers of earlier oomd runs: their events
	// went with those runs (seqs are reserved in batches, so some were never used).
	EarlierRun uint64 `json:"earlierRun,omitempty"`
}

// printer writes entries in the chosen form and counts them against --limit.
type printer struct {
	w       io.Writer
	json    bool
	limit   uint64
	printed uint64
	what    string // where missed entries were lost, for the text form
	base    uint64 // seqs up to base belong to earlier oomd runs (Status.eventSeqBase)
}

// full reports whether --limit was reached.
func (p *printer) full() bool { return p.limit > 0 && p.printed >= p.limit }

// room is how many more entries may be printed, capped at n.
func (p *printer) room(n uint64) uint64 {
	if p.limit == 0 {
		return n
	}
	return min(n, p.limit-p.printed)
}

// missed reports n entries after since that can no longer be read.
func (p *printer) missed(n, since uint64) error {
	if n == 0 {
		return nil
	}
	var earlier uint64
	if since < p.base {
		earlier = min(n, p.base-since)
	}
	if p.json {
		return jsonLine(p.w, missedView{Missed: n, EarlierRun: earlier})
	}
	if earlier == 0 {
		_, err := fmt.Fprintf(p.w, "missed=%d (%s)\n", n, p.what)
		return err
	}
	msg := fmt.Sprintf("missed=%d (oomd restarted: seqs %d..%d were its earlier runs' and went with them; some of those numbers were never used",
		n, since+1, since+earlier)
	if rest := n - earlier; rest > 0 {
		msg += fmt.Sprintf("; %d more %s", rest, p.what)
	}
	_, err := fmt.Fprintln(p.w, msg+")")
	return err
}

func (p *printer) event(e policy.Event) error {
	p.printed++
	if p.json {
		return jsonLine(p.w, eventView{
			Seq: e.Seq, Tick: e.Tick, Kind: enumName(e.Kind.String(), uint16(e.Kind)), Subject: e.Subject,
			Bytes: e.Bytes, Limit: e.Limit, Decision: e.Decision, Reason: e.Reason, WallTimeNs: e.WallTimeNs,
		})
	}
	if e.WallTimeNs != 0 {
		_, err := fmt.Fprintln(p.w, wallTime(e.WallTimeNs), policy.FormatEvent(e, policy.Human))
		return err
	}
	_, err := fmt.Fprintln(p.w, policy.FormatEvent(e, policy.Human))
	return err
}

func (r *runner) events(ctx context.Context, f *pageFlags) error {
	if f.follow {
		return r.follow(ctx, f)
	}
	return r.withOomd(ctx, func(ctx context.Context, c *ctlclient.Client) error {
		p := &printer{w: r.env.Stdout, json: r.g.json, limit: f.limit, what: "overwritten in oomd's event ring before they were read"}
		var err error
		if p.base, err = runBase(ctx, c); err != nil {
			return r.explain(err)
		}
		return printPages(p, f.since, func(since uint64, limit uint32) ([]policy.Event, uint64, uint64, error) {
			evs, next, missed, err := c.ReadEvents(ctx, since, limit)
			return evs, next, missed, r.explain(err)
		}, p.event)
	})
}

// runBase is the event seq base of the oomd run c is connected to: seqs up to it were
// numbered by earlier runs.
func runBase(ctx context.Context, c *ctlclient.Client) (uint64, error) {
	st, err := c.Status(ctx)
	return st.EventSeqBase, err
}

// printPages prints pages from read until the end or the printer's limit, reporting
// entries that were lost before they could be read.
func printPages[T any](p *printer, since uint64, read func(since uint64, limit uint32) ([]T, uint64, uint64, error), print func(T) error) error {
	for !p.full() {
		page, next, missed, err := read(since, uint32(p.room(wire.MaxPage)))
		if err != nil {
			return err
		}
		if err := p.missed(missed, since); err != nil {
			return err
		}
		for _, x := range page {
			if err := print(x); err != nil {
				return err
			}
		}
		if len(page) == 0 || next <= since {
			return nil
		}
		since = next
	}
	return nil
}

// batch is one push of the subscription.
type batch struct {
	events []policy.Event
	missed uint64
}

// subscriber hands each push to follow's loop. It returns only once the loop took the
// batch, so oomd's flow control paces the stream to how fast we print.
type subscriber struct {
	batches chan<- batch
	done    <-chan struct{}
}

func (s subscriber) Push(ctx context.Context, call oomdpb.EventSubscriber_push) error {
	evs, missed, err := wire.ReadEventBatch(call.Args())
	if err != nil {
		return err
	}
	select {
	case s.batches <- batch{events: evs, missed: missed}:
		return nil
	case <-s.done:
		return errors.New("oomctl stopped following")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// follow prints the history after --since, then every new event as oomd publishes it,
// until ctx ends (Ctrl-C, SIGTERM: exit 0), --limit is reached, or oomd goes away.
// --timeout bounds the setup (setup), not the stream.
func (r *runner) follow(ctx context.Context, f *pageFlags) error {
	return r.withOomd(ctx, func(setup context.Context, c *ctlclient.Client) error { return r.stream(ctx, setup, c, f) })
}

func (r *runner) stream(ctx, setup context.Context, c *ctlclient.Client, f *pageFlags) error {
	batches := make(chan batch)
	done := make(chan struct{})
	defer close(done)
	sf, rel := c.Ctl.Subscribe(setup, func(p oomdpb.Control_subscribe_Params) error {
		p.SetSinceSeq(f.since)
		return p.SetSubscriber(oomdpb.EventSubscriber_ServerToClient(subscriber{batches: batches, done: done}))
	})
	defer rel()
	res, err := sf.Struct()
	if err != nil {
		return r.explain(fmt.Errorf("subscribe: %w", err))
	}
	sub := res.Subscription().AddRef()
	defer sub.Release()

	p := &printer{w: r.env.Stdout, json: r.g.json, limit: f.limit, what: "overwritten in oomd's event ring before they could be sent"}
	if p.base, err = runBase(setup, c); err != nil {
		return r.explain(err)
	}
	last := f.since
	for !p.full() {
		select {
		case <-ctx.Done():
			return nil
		case <-c.Done():
			return fmt.Errorf("oomd closed the connection (stopped or restarted?) after event seq %d; resume with --since %d", last, last)
		case b := <-batches:
			if err := p.missed(b.missed, last); err != nil {
				return err
			}
			if b.missed > 0 {
				last += b.missed
			}
			for _, e := range b.events {
				if p.full() {
					break
				}
				if err := p.event(e); err != nil {
					return err
				}
				last = e.Seq
			}
		}
	}
	return nil
}
