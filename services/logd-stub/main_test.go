package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/testutil"
)

// binary is logd-stub, built once for the package.
var binary string

func TestMain(m *testing.M) {
	progs, err := testutil.BuildPrograms(testutil.BuildOptions{}, "./services/logd-stub")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = progs.Path("logd-stub")
	code := testutil.Run(m)
	progs.Remove()
	os.Exit(code)
}

// session is the part of execd's Session that logd uses: ready() is our signal that the
// socket is listening.
type session struct{ ready chan struct{} }

func (s *session) Whoami(context.Context, oomdpb.Session_whoami) error { return nil }
func (s *session) Grants(context.Context, oomdpb.Session_grants) error {
	return fmt.Errorf("logd gets no grants")
}
func (s *session) Ready(context.Context, oomdpb.Session_ready) error {
	close(s.ready)
	return nil
}
func (s *session) WatchReboot(context.Context, oomdpb.Session_watchReboot) error {
	return fmt.Errorf("logd registers no reboot watcher")
}

// startProcess runs logd-stub the way execd does (an inherited session connection on
// fd 3) and returns once it reported ready.
func startProcess(t *testing.T, ctx context.Context, socket, dir string) *exec.Cmd {
	t.Helper()
	ours, theirs, err := rpcx.Socketpair()
	require.NoError(t, err)
	defer theirs.Close()
	c, err := rpcx.FileToConn(ours)
	require.NoError(t, err)
	s := &session{ready: make(chan struct{})}
	conn := rpcx.NewConn(c, capnp.Client(oomdpb.Session_ServerToClient(s)), zaptest.NewLogger(t))
	t.Cleanup(func() { conn.Close() })

	cmd := exec.Command(binary, "--socket", socket, "--dir", dir, "--max-segment-bytes", "65536")
	cmd.Env = append(os.Environ(), rpcx.EnvSessionFD+"=3")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = &testWriter{t}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	select {
	case <-s.ready:
	case <-ctx.Done():
		t.Fatal("logd-stub did not report ready")
	}
	return cmd
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(b []byte) (int, error) {
	w.t.Logf("logd-stub: %s", b)
	return len(b), nil
}

func appendRecord(ctx context.Context, a oomdpb.Appender, ws uint64) error {
	return a.Append(ctx, func(p oomdpb.Appender_append_Params) error {
		r, err := p.NewRecord()
		if err != nil {
			return err
		}
		r.SetWriterSeq(ws)
		r.SetKind(oomdpb.EventKind_killDecided)
		r.SetBytes(ws * 4096)
		return r.SetSubject(fmt.Sprintf("hog-%d", ws))
	})
}

func TestAckedRecordsSurviveSIGKILL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := zaptest.NewLogger(t)
	socket := filepath.Join(t.TempDir(), "logd.sock")
	dir := filepath.Join(t.TempDir(), "journal")

	cmd := startProcess(t, ctx, socket, dir)
	conn, c, err := rpcx.Dial(ctx, socket, log)
	require.NoError(t, err)
	journal := oomdpb.Journal(c)
	f, release := journal.Open(ctx, func(p oomdpb.Journal_open_Params) error { return p.SetWriter("oomd") })
	res, err := f.Struct()
	require.NoError(t, err)
	a := res.Appender().AddRef()
	release()
	a.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))

	// Batches of streamed appends, each acknowledged by a sync, across several
	// segment rotations.
	var acked uint64
	for ws := uint64(1); ws <= 2000; ws++ {
		require.NoError(t, appendRecord(ctx, a, ws))
		if ws%100 == 0 {
			sf, srelease := a.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(ws); return nil })
			sres, err := sf.Struct()
			require.NoError(t, err)
			require.Equal(t, ws, sres.DurableWriterSeq())
			acked = ws
			srelease()
		}
	}
	// More records in flight, never acknowledged, then the crash.
	for ws := acked + 1; ws <= acked+50; ws++ {
		_ = appendRecord(ctx, a, ws)
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	a.Release()
	journal.Release()
	conn.Close()

	startProcess(t, ctx, socket, dir)
	conn, c, err = rpcx.Dial(ctx, socket, log)
	require.NoError(t, err)
	defer conn.Close()
	journal = oomdpb.Journal(c)
	defer journal.Release()

	f, release = journal.Open(ctx, func(p oomdpb.Journal_open_Params) error { return p.SetWriter("oomd") })
	defer release()
	res, err = f.Struct()
	require.NoError(t, err)
	last := res.LastWriterSeq()
	require.GreaterOrEqual(t, last, acked, "every acknowledged record is still there")

	var seqs, writerSeqs []uint64
	since := uint64(0)
	for {
		rf, rrelease := journal.Read(ctx, func(p oomdpb.Journal_read_Params) error {
			p.SetSinceSeq(since)
			p.SetLimit(1024)
			return nil
		})
		rres, err := rf.Struct()
		require.NoError(t, err)
		es, err := rres.Entries()
		require.NoError(t, err)
		assert.Zero(t, rres.Missed())
		for i := 0; i < es.Len(); i++ {
			r, err := es.At(i).Record()
			require.NoError(t, err)
			seqs = append(seqs, es.At(i).Seq())
			writerSeqs = append(writerSeqs, r.WriterSeq())
		}
		since = rres.NextSeq()
		rrelease()
		if es.Len() == 0 {
			break
		}
	}
	require.Len(t, writerSeqs, int(last))
	for i := range writerSeqs {
		require.Equal(t, uint64(i+1), writerSeqs[i], "records 1..%d present exactly once, in order", last)
		require.Equal(t, uint64(i+1), seqs[i])
	}

	// Appending continues where the journal left off.
	a = res.Appender()
	require.NoError(t, appendRecord(ctx, a, last+1))
	sf, srelease := a.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(last + 1); return nil })
	defer srelease()
	sres, err := sf.Struct()
	require.NoError(t, err)
	assert.Equal(t, last+1, sres.DurableWriterSeq())
	stf, strelease := journal.Status(ctx, nil)
	defer strelease()
	st, err := stf.Struct()
	require.NoError(t, err)
	assert.Equal(t, last+1, st.LastSeq(), "journal seq continued across the crash")
}

func TestStopsCleanlyOnSIGTERM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	socket := filepath.Join(t.TempDir(), "logd.sock")
	cmd := startProcess(t, ctx, socket, filepath.Join(t.TempDir(), "journal"))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait(), "exit status 0 on SIGTERM")
	_, err := os.Stat(socket)
	assert.ErrorIs(t, err, os.ErrNotExist, "socket removed on exit")
}

func TestBadFlagsExitNonZero(t *testing.T) {
	out, err := exec.Command(binary, "--socket", filepath.Join(t.TempDir(), "s")).CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 2, exit.ExitCode())
	assert.Contains(t, string(out), "usage: logd-stub")

	// A directory that is a file: recovery cannot start.
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	err = exec.Command(binary, "--socket", filepath.Join(t.TempDir(), "s"), "--dir", file).Run()
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 1, exit.ExitCode())
}
