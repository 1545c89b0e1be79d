package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

// Level watchers (Control.watchLevels). Each has its own goroutine (docs/capnp-traps.md, trap 1)
// and holds at most one change: the latest. While a changed() call is unanswered,
// newer changes overwrite that one slot, so a watcher that never answers costs one
// goroutine and one slot, never a queue; when it answers it gets the level as it is
// then, if that differs from what it was last told.
const maxLevelWatchers = 16

var errTooManyLevelWatchers = fmt.Errorf("too many level watchers (at most %d)", maxLevelWatchers)

type levelNote struct {
	level policy.Level
	avail uint64
	seq   uint64 // the levelChanged event's seq
}

type levelWatcher struct {
	client oomdpb.LevelWatcher
	wake   chan struct{}
	cancel context.CancelFunc

	mu     sync.Mutex
	latest levelNote
}

type levelWatchers struct {
	mu   sync.Mutex
	list []*levelWatcher
}

// notify records n as every watcher's latest change and wakes them.
func (ws *levelWatchers) notify(n levelNote) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, w := range ws.list {
		w.mu.Lock()
		w.latest = n
		w.mu.Unlock()
		poke(w.wake)
	}
}

func (ws *levelWatchers) remove(w *levelWatcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for i, x := range ws.list {
		if x == w {
			ws.list = append(ws.list[:i], ws.list[i+1:]...)
			return
		}
	}
}

// watchLevels registers client (whose reference it takes over) and returns the level
// it starts from. Registration and the level read happen on the loop, where level
// changes are published, so no change can fall between them.
func (d *Daemon) watchLevels(client oomdpb.LevelWatcher) (policy.Level, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(d.ctx)
	w := &levelWatcher{client: client, wake: make(chan struct{}, 1), cancel: cancel}
	var (
		l    policy.Level
		full bool
	)
	err := d.do(func() {
		var avail uint64
		l, avail = d.core.Level()
		w.latest = levelNote{level: l, avail: avail}
		d.sys.watchers.mu.Lock()
		full = len(d.sys.watchers.list) >= maxLevelWatchers
		if !full {
			d.sys.watchers.list = append(d.sys.watchers.list, w)
		}
		d.sys.watchers.mu.Unlock()
	})
	if err == nil && full {
		err = errTooManyLevelWatchers
	}
	if err != nil {
		cancel()
		client.Release()
		return 0, nil, err
	}
	go d.serveLevelWatcher(ctx, w, l)
	return l, cancel, nil
}

func (d *Daemon) serveLevelWatcher(ctx context.Context, w *levelWatcher, told policy.Level) {
	defer func() {
		w.cancel()
		d.sys.watchers.remove(w)
		w.client.Release()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		w.mu.Lock()
		n := w.latest
		w.mu.Unlock()
		if n.level == told {
			continue // changes came and went while the last one was unanswered
		}
		f, rel := w.client.Changed(ctx, func(p oomdpb.LevelWatcher_changed_Params) error {
			p.SetLevel(oomdpb.PressureLevel(n.level))
			p.SetMemAvailableBytes(n.avail)
			p.SetSeq(n.seq)
			return nil
		})
		_, err := f.Struct()
		rel()
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				d.log.Debug("level watcher gone", zap.Error(err))
			}
			return
		}
		told = n.level
	}
}
