// Command powercut drives the VM's power-cut test of logd's durability
// (scripts/qemu-test.sh, VM_TEST=powercut). One binary, two roles in the manifest
// (scripts/vm/powercut-manifest.json), the same in both boots:
//
//	powercut --mount DEV --at DIR
//	    waits (inotify, bounded) for the disk's device node, mounts its ext4 file system
//	    on DIR, calls Session.ready (logd depends on it, so logd only starts on the
//	    mounted disk), and on SIGTERM unmounts. The disk is an image file the host
//	    formats fresh for every run, attached to QEMU as NVMe.
//
//	powercut --logd SOCKET --acked N --batch B
//	    the kernel command line says which boot it is (powercut=boot1|boot2):
//	    boot1: open logd's Journal as writer "powercut" (lastWriterSeq must be 0: a fresh
//	           disk), append records writerSeq 1..N in batches of B, each batch followed
//	           by Appender.sync; once logd acknowledged N durable, append one batch
//	           more that logd writes but nobody syncs, and print
//	           "POWERCUT: acked n=N lastWriterSeq=N written=<logd's last seq>
//	           durable=<logd's durable seq>"; then keep appending (and asking for syncs
//	           whose answers nobody reports), so records are in flight when the host
//	           kills QEMU with SIGKILL on that line. If no cut comes within --timeout it
//	           prints "POWERCUT: FAIL: ...".
//	    boot2: read the whole journal back through logd (Journal.read) and print
//	           "POWERCUT: after cut n=<records of writer powercut> contiguous=<b>
//	           lastWriterSeq=<x> corrupt=<logd's corrupt records> missed=<m>", then
//	           "POWERCUT: ok ..." when writerSeq 1..x are all there in order, x >= N and
//	           nothing was corrupt, else "POWERCUT: FAIL: <why>"; exit 0 or 1
//	           (exitWith: the VM powers off).
//
// Markers go to stdout as plain lines; the log goes to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/session"
)

// writer is the journal writer name of the test's records.
const writer = "powercut"

// logdWriter is the writer logd uses for its own "corrupt" records after damage
// (services/logd-stub/server.DamageWriter).
const logdWriter = "logd"

func main() {
	dev := flag.String("mount", "", "mount mode: the block device holding the ext4 file system")
	at := flag.String("at", "", "mount mode: where to mount it")
	socket := flag.String("logd", "", "writer/checker mode: logd's Journal socket")
	acked := flag.Uint64("acked", 200, "records boot 1 has acknowledged durable before the marker")
	batch := flag.Uint64("batch", 50, "records per sync in boot 1")
	extra := flag.Uint64("extra", 20000, "records boot 1 appends after the marker at most (the journal's rotation must never reach the acknowledged ones)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline for this boot's part")
	flag.Parse()

	log := logx.New("powercut")
	defer log.Sync()
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *dev != "" {
		if err := mountMode(sigCtx, *dev, *at, *timeout, log); err != nil {
			fmt.Printf("POWERCUT: FAIL: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ctx, cancel := context.WithTimeout(sigCtx, *timeout)
	defer cancel()
	if err := run(ctx, *socket, *acked, *batch, *extra, log); err != nil {
		fmt.Printf("POWERCUT: FAIL: %v\n", err)
		os.Exit(1)
	}
}

// mountMode mounts dev on at, reports ready, and unmounts when stopped.
func mountMode(ctx context.Context, dev, at string, timeout time.Duration, log *zap.Logger) error {
	if at == "" {
		return errors.New("--mount needs --at")
	}
	if err := waitForNode(dev, time.Now().Add(timeout)); err != nil {
		return err
	}
	if err := os.MkdirAll(at, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, at, "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount %s (ext4) on %s: %w", dev, at, err)
	}
	fmt.Fprintf(os.Stderr, "powercut: mounted %s (ext4) on %s\n", dev, at)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sess, err := session.Open(rctx, log)
	if err != nil {
		return fmt.Errorf("open execd session: %w", err)
	}
	defer sess.Close()
	if err := sess.Ready(rctx); err != nil {
		return err
	}
	<-ctx.Done() // execd stops us after logd (reverse dependency order)
	if err := unix.Unmount(at, 0); err != nil {
		log.Warn("unmount", zap.String("at", at), zap.Error(err))
	}
	return nil
}

// waitForNode returns once path exists, watching its directory with inotify: the NVMe
// namespace is probed asynchronously and devtmpfs creates the node when it is.
func waitForNode(path string, deadline time.Time) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		return fmt.Errorf("watch %s: %w", filepath.Dir(path), err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%s did not appear", path)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll inotify: %w", err)
		}
		for { // drain; the loop re-checks the path
			if _, err := unix.Read(fd, buf); err != nil {
				break
			}
		}
	}
}

func run(ctx context.Context, socket string, acked, batch, extra uint64, log *zap.Logger) error {
	if socket == "" || acked == 0 || batch == 0 {
		return errors.New("need --logd, --acked > 0 and --batch > 0")
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	var boot string
	for _, w := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(w, "powercut="); ok {
			boot = v
		}
	}
	sess, err := session.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("open execd session: %w", err)
	}
	defer sess.Close()
	if err := sess.Ready(ctx); err != nil {
		return err
	}
	conn, client, err := rpcx.Dial(ctx, socket, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	journal := oomdpb.Journal(client)
	defer journal.Release()

	switch boot {
	case "boot1":
		return writeUntilCut(ctx, journal, acked, batch, extra)
	case "boot2":
		return readBack(ctx, journal, acked)
	}
	return fmt.Errorf("no powercut=boot1|boot2 on the kernel command line (%q)", strings.TrimSpace(string(cmdline)))
}

// record fills one test record: every field derives from writerSeq, so boot 2 can tell
// a record read back is the one written.
func record(rec oomdpb.AuditRecord, ws uint64) error {
	rec.SetWriterSeq(ws)
	rec.SetTick(ws)
	rec.SetKind(oomdpb.EventKind_policyChanged)
	rec.SetBytes(ws * 4096)
	rec.SetLimit(ws ^ 0x5a5a)
	if err := rec.SetSubject(writer); err != nil {
		return err
	}
	return rec.SetReason(fmt.Sprintf("powercut record %d", ws))
}

func checkRecord(rec oomdpb.AuditRecord) error {
	ws := rec.WriterSeq()
	subject, err := rec.Subject()
	if err != nil {
		return err
	}
	reason, err := rec.Reason()
	if err != nil {
		return err
	}
	if rec.Tick() != ws || rec.Kind() != oomdpb.EventKind_policyChanged || rec.Bytes() != ws*4096 ||
		rec.Limit() != ws^0x5a5a || subject != writer || reason != fmt.Sprintf("powercut record %d", ws) {
		return fmt.Errorf("record writerSeq %d does not hold what was written (tick %d bytes %d subject %q reason %q)",
			ws, rec.Tick(), rec.Bytes(), subject, reason)
	}
	return nil
}

func appendOne(ctx context.Context, app oomdpb.Appender, ws uint64) error {
	err := app.Append(ctx, func(p oomdpb.Appender_append_Params) error {
		rec, err := p.NewRecord()
		if err != nil {
			return err
		}
		return record(rec, ws)
	})
	if err != nil {
		return fmt.Errorf("append writerSeq %d: %w", ws, err)
	}
	return nil
}

// writeUntilCut is boot 1: acknowledged batches up to acked, the marker, then records in
// flight until the host cuts the power.
func writeUntilCut(ctx context.Context, journal oomdpb.Journal, acked, batch, extra uint64) error {
	f, rel := journal.Open(ctx, func(p oomdpb.Journal_open_Params) error { return p.SetWriter(writer) })
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return fmt.Errorf("open journal: %w", err)
	}
	if last := res.LastWriterSeq(); last != 0 {
		return fmt.Errorf("boot 1: logd already holds writerSeq %d of %q: the disk was not fresh", last, writer)
	}
	app := res.Appender().AddRef()
	defer app.Release()
	// The limiter must sit on the reference we call through (docs/capnp-traps.md, trap 4).
	app.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))

	sync := func(upTo uint64) (oomdpb.Appender_sync_Results_Future, capnp.ReleaseFunc) {
		return app.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(upTo); return nil })
	}
	var ws uint64
	for ws < acked {
		end := min(ws+batch, acked)
		for ws < end {
			ws++
			if err := appendOne(ctx, app, ws); err != nil {
				return err
			}
		}
		fut, rel := sync(end)
		got, err := fut.Struct()
		if err != nil {
			rel()
			return fmt.Errorf("sync upTo %d: %w", end, err)
		}
		durable := got.DurableWriterSeq()
		rel()
		if durable < end {
			return fmt.Errorf("sync upTo %d: logd says durable only up to %d", end, durable)
		}
	}
	// One batch more that logd has written (each append's return says the handler ran,
	// and logd's handler writes) but nobody asked to sync: un-acknowledged data in the
	// guest's page cache when the marker goes out. status shows it: seq (written) above
	// durableSeq (fsync'ed).
	for end := ws + batch; ws < end; {
		ws++
		if err := appendOne(ctx, app, ws); err != nil {
			return err
		}
	}
	if err := app.WaitStreaming(); err != nil {
		return fmt.Errorf("appends after the acknowledged ones: %w", err)
	}
	sf, srel := journal.Status(ctx, nil)
	st, err := sf.Struct()
	if err != nil {
		srel()
		return fmt.Errorf("status: %w", err)
	}
	written, durable := st.LastSeq(), st.DurableSeq()
	srel()
	fmt.Printf("POWERCUT: acked n=%d lastWriterSeq=%d written=%d durable=%d\n", acked, acked, written, durable)

	// In flight from here: appends, and syncs whose answers are never reported. At most
	// two syncs are outstanding (the older one is awaited before a third is sent) so the
	// calls stay bounded; logd group-commits them anyway.
	var pending []capnp.ReleaseFunc
	var futs []oomdpb.Appender_sync_Results_Future
	defer func() {
		for _, rel := range pending {
			rel()
		}
	}()
	for end := acked + extra; ws < end; {
		next := min(ws+batch, end)
		for ws < next {
			ws++
			if err := appendOne(ctx, app, ws); err != nil {
				return err
			}
		}
		fut, rel := sync(ws)
		futs, pending = append(futs, fut), append(pending, rel)
		if len(futs) > 2 {
			if _, err := futs[0].Struct(); err != nil {
				return fmt.Errorf("sync after the marker: %w", err)
			}
			pending[0]()
			futs, pending = futs[1:], pending[1:]
		}
	}
	<-ctx.Done()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("boot 1: appended up to writerSeq %d and no power cut came", ws)
	}
	return nil
}

// readBack is boot 2: every entry of the journal, through logd.
func readBack(ctx context.Context, journal oomdpb.Journal, acked uint64) error {
	var since, n, last, corrupt, missed uint64
	var bad error
	contiguous := true
	for {
		f, rel := journal.Read(ctx, func(p oomdpb.Journal_read_Params) error {
			p.SetSinceSeq(since)
			p.SetLimit(1024)
			return nil
		})
		res, err := f.Struct()
		if err != nil {
			rel()
			return fmt.Errorf("read since %d: %w", since, err)
		}
		entries, err := res.Entries()
		if err != nil {
			rel()
			return fmt.Errorf("read since %d: %w", since, err)
		}
		missed += res.Missed()
		for i := 0; i < entries.Len(); i++ {
			e := entries.At(i)
			w, err := e.Writer()
			if err != nil {
				rel()
				return fmt.Errorf("entry %d: %w", e.Seq(), err)
			}
			if w == logdWriter {
				corrupt++
				continue
			}
			if w != writer {
				continue
			}
			rec, err := e.Record()
			if err != nil {
				rel()
				return fmt.Errorf("entry %d: %w", e.Seq(), err)
			}
			n++
			if ws := rec.WriterSeq(); ws != last+1 {
				contiguous = false
				if bad == nil {
					bad = fmt.Errorf("entry %d holds writerSeq %d after %d", e.Seq(), ws, last)
				}
			}
			if err := checkRecord(rec); err != nil && bad == nil {
				bad = fmt.Errorf("entry %d: %w", e.Seq(), err)
			}
			last = rec.WriterSeq()
		}
		next := res.NextSeq()
		rel()
		if entries.Len() == 0 || next <= since {
			break
		}
		since = next
	}
	fmt.Printf("POWERCUT: after cut n=%d contiguous=%t lastWriterSeq=%d corrupt=%d missed=%d\n",
		n, contiguous, last, corrupt, missed)
	switch {
	case bad != nil:
		return bad
	case corrupt > 0 || missed > 0:
		return fmt.Errorf("logd found damage: %d corrupt records, %d seqs missed", corrupt, missed)
	case last < acked:
		return fmt.Errorf("only writerSeq 1..%d survived, but 1..%d were acknowledged durable", last, acked)
	}
	fmt.Printf("POWERCUT: ok acked=%d survived=%d beyondAck=%d\n", acked, n, n-acked)
	return nil
}
