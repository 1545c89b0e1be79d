package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// fakeOomd serves oomd's Control interface on a real Unix socket with canned answers,
// so the commands can be tested whole (dial, call, decode, print) without the stack.
// Its answers go through the same wire encoders the real server uses, and validation
// through the same wire.Policy.
type fakeOomd struct {
	path string
	srv  *rpcx.Server

	mu       sync.Mutex
	pol      policy.Policy
	version  uint64
	setCalls int
	status   wire.Status
	events   []policy.Event // seq 1..n; those with seq <= dropped are overwritten
	dropped  uint64
	audit    []wire.JournalEntry
	reboot   wire.RebootRecord
	// changeAfterGet bumps the version after answering GetPolicy, as if another client
	// set a policy between oomctl's read and its write.
	changeAfterGet bool
	sub            oomdpb.EventSubscriber
	subSince       uint64
	subscribed     chan struct{}
}

var _ oomdpb.Control_Server = (*fakeOomd)(nil)

func startFake(t *testing.T) *fakeOomd {
	t.Helper()
	// Short path: a Unix socket path must fit in 108 bytes, which t.TempDir may exceed.
	dir, err := os.MkdirTemp("", "oomctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeOomd{path: filepath.Join(dir, "oomd.sock"), pol: policy.DefaultPolicy(), version: 1,
		subscribed: make(chan struct{})}
	l, err := rpcx.Listen(f.path)
	require.NoError(t, err)
	log := zaptest.NewLogger(t)
	srv := rpcx.NewServer(log, func(rpcx.Peer) (capnp.Client, error) {
		return capnp.Client(oomdpb.Control_ServerToClient(f)), nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	f.srv = srv
	go func() { srv.Serve(ctx, l); close(done) }()
	t.Cleanup(func() {
		f.mu.Lock()
		f.sub.Release()
		f.mu.Unlock()
		cancel()
		srv.Close(2 * time.Second)
		<-done
	})
	return f
}

// do runs fn with the fake's state locked (the server reads it from other goroutines).
func (f *fakeOomd) do(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeOomd) policy() (p policy.Policy) {
	f.do(func() { p = f.pol })
	return p
}

func (f *fakeOomd) sets() (n int) {
	f.do(func() { n = f.setCalls })
	return n
}

func (f *fakeOomd) SetPolicy(_ context.Context, call oomdpb.Control_setPolicy) error {
	src, err := call.Args().Policy()
	if err != nil {
		return err
	}
	p, err := wire.Policy(src)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ev := call.Args().ExpectVersion(); ev != 0 && ev != f.version {
		return fmt.Errorf("policy changed: version %d is in force, not %d; read it again and retry", f.version, ev)
	}
	f.setCalls++
	f.pol = p
	f.version++
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetVersion(f.version)
	return nil
}

func (f *fakeOomd) GetPolicy(_ context.Context, call oomdpb.Control_getPolicy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	dst, err := res.NewPolicy()
	if err != nil {
		return err
	}
	res.SetVersion(f.version)
	if f.changeAfterGet { // another operator sets a policy right after our read
		f.version++
	}
	return wire.SetPolicy(dst, f.pol)
}

// read mirrors the ring's contract: events after since, missed for those overwritten.
func (f *fakeOomd) read(since uint64, limit int) (evs []policy.Event, next, missed uint64) {
	next = since
	if since < f.dropped {
		missed = f.dropped - since
		next = f.dropped
	}
	for _, e := range f.events {
		if e.Seq > next && len(evs) < limit {
			evs = append(evs, e)
		}
	}
	if len(evs) > 0 {
		next = evs[len(evs)-1].Seq
	}
	return evs, next, missed
}

func (f *fakeOomd) Events(_ context.Context, call oomdpb.Control_events) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	evs, next, missed := f.read(call.Args().SinceSeq(), int(call.Args().Limit()))
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetNextSeq(next)
	return wire.SetEventBatch(res, evs, missed)
}

func (f *fakeOomd) Subscribe(_ context.Context, call oomdpb.Control_subscribe) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sub.IsValid() {
		return errors.New("fake: one subscriber at a time")
	}
	f.sub = call.Args().Subscriber().AddRef()
	f.subSince = call.Args().SinceSeq()
	close(f.subscribed)
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetSubscription(oomdpb.Subscription_ServerToClient(struct{}{}))
}

// push sends one batch to the subscriber and waits until it was taken.
func (f *fakeOomd) push(t *testing.T, evs []policy.Event, missed uint64) {
	t.Helper()
	require.NoError(t, f.tryPush(evs, missed))
}

// tryPush is push for a batch after which the subscriber may hang up at once (its
// --limit was reached), so the stream's outcome is not the test's business.
func (f *fakeOomd) tryPush(evs []policy.Event, missed uint64) error {
	f.mu.Lock()
	sub := f.sub.AddRef()
	f.mu.Unlock()
	defer sub.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := sub.Push(ctx, func(p oomdpb.EventSubscriber_push_Params) error {
		return wire.SetEventBatch(p, evs, missed)
	})
	if err != nil {
		return err
	}
	return sub.WaitStreaming()
}

func (f *fakeOomd) Inject(context.Context, oomdpb.Control_inject) error {
	return errors.New("fake: inject is not used by oomctl")
}

func (f *fakeOomd) Status(_ context.Context, call oomdpb.Control_status) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	dst, err := res.NewStatus()
	if err != nil {
		return err
	}
	return wire.SetStatus(dst, f.status)
}

func (f *fakeOomd) LastReboot(_ context.Context, call oomdpb.Control_lastReboot) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	dst, err := res.NewRecord()
	if err != nil {
		return err
	}
	return wire.SetRebootRecord(dst, f.reboot)
}

func (f *fakeOomd) WatchLevels(context.Context, oomdpb.Control_watchLevels) error {
	return capnp.Unimplemented("fake")
}

func (f *fakeOomd) RequestReboot(context.Context, oomdpb.Control_requestReboot) error {
	return capnp.Unimplemented("fake")
}

func (f *fakeOomd) Audit(_ context.Context, call oomdpb.Control_audit) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	since, limit := call.Args().SinceSeq(), int(call.Args().Limit())
	var page []wire.JournalEntry
	for _, e := range f.audit {
		if e.Seq > since && len(page) < limit {
			page = append(page, e)
		}
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	l, err := res.NewEntries(int32(len(page)))
	if err != nil {
		return err
	}
	next := since
	for i, e := range page {
		if err := wire.SetJournalEntry(l.At(i), e); err != nil {
			return err
		}
		next = e.Seq
	}
	res.SetNextSeq(next)
	return nil
}
