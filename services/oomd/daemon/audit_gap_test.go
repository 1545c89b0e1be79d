package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/services/logd-stub/journal"
	"oomd.dev/oomd/services/logd-stub/server"
	"oomd.dev/oomd/services/oomd/policy"
)

// serveJournal serves j as logd on sock until the returned stop is called (which also
// closes j).
func serveJournal(t *testing.T, j *journal.Journal, sock string, log *zap.Logger) (stop func()) {
	t.Helper()
	l, err := rpcx.Listen(sock)
	require.NoError(t, err)
	srv := rpcx.NewServer(log, server.New(j, log).Bootstrap)
	ctx, cancel := context.WithCancel(context.Background())
	go srv.Serve(ctx, l)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		srv.Close(2 * time.Second)
		require.NoError(t, j.Close())
		_ = os.Remove(sock)
	}
	t.Cleanup(stop)
	return stop
}

// copyDir copies the regular files of src into a new directory dst (a backup).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, os.Mkdir(dst, 0o700))
	des, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, de.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, de.Name()), b, 0o600))
	}
}

// oomdRecords returns every journal record of writer "oomd", in journal order.
func oomdRecords(t *testing.T, j *journal.Journal) []policy.AuditRecord {
	t.Helper()
	es, _, _, err := j.Read(0, 1000, 1<<20)
	require.NoError(t, err)
	var out []policy.AuditRecord
	for _, e := range es {
		if e.Writer != WriterName {
			continue
		}
		msg, _, err := capnp.NewMessage(capnp.SingleSegment(e.Data))
		require.NoError(t, err)
		rec, err := oomdpb.ReadRootAuditRecord(msg)
		require.NoError(t, err)
		subject, _ := rec.Subject()
		reason, _ := rec.Reason()
		out = append(out, policy.AuditRecord{WriterSeq: rec.WriterSeq(), Kind: policy.EventKind(rec.Kind()),
			Subject: subject, Decision: rec.Decision(), Reason: reason})
	}
	return out
}

// TestAuditorHealsAWriterSeqGap: logd is restored from a backup taken after oomd's
// record 3, so it lost records 4 and 5 it had acknowledged (oomd no longer holds them).
// The next record oomd sends is 6, and logd expects 4: before the fix oomd looped on
// "writerSeq gap for writer oomd: expected 4, got 6" for ever. Now oomd writes one
// explicit gap record (the placeholder convention: kind auditSpilled, reason "lost: ...")
// as writerSeq 5 standing for 4..5, sends 6, and auditing goes on (7). With a spill file
// the same happens when the record waiting in the spill is replayed.
func TestAuditorHealsAWriterSeqGap(t *testing.T) {
	for _, withSpill := range []bool{false, true} {
		name := "memory"
		if withSpill {
			name = "spill"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			log := zaptest.NewLogger(t)
			jdir, backup := filepath.Join(dir, "journal"), filepath.Join(dir, "backup")
			sock := filepath.Join(dir, "logd.sock")
			open := func(d string) *journal.Journal {
				j, err := journal.Open(d, journal.Options{}, log.Named("journal"))
				require.NoError(t, err)
				return j
			}

			j := open(jdir)
			stop := serveJournal(t, j, sock, log.Named("logd1"))
			a := NewLogdAuditor(sock, log)
			k := newAcks()
			var sp *Spill
			if withSpill {
				sp = openSpill(t, filepath.Join(dir, "audit.spill"), 0)
				defer sp.Close()
				a.UseSpill(sp, 0)
				a.SetSpillHook(k.spill)
			}
			// inLogd waits until logd holds everything up to n and oomd holds none of it
			// any more (with a spill file, records may be acknowledged from the spill
			// first, and it is emptied once logd has them).
			inLogd := func(n uint64) {
				k.waitAcked(t, n)
				eventually(t, "records in logd", func() bool {
					return j.LastWriterSeq(WriterName) == n && (sp == nil || sp.Len() == 0)
				})
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			require.NoError(t, a.Start(ctx, k.ack))
			a.Submit([]policy.AuditRecord{coreRec(1, "hog1"), coreRec(2, "hog2"), coreRec(3, "hog3")})
			inLogd(3)
			stop()
			copyDir(t, jdir, backup)

			j = open(jdir)
			stop = serveJournal(t, j, sock, log.Named("logd2"))
			a.Submit([]policy.AuditRecord{coreRec(4, "hog4"), coreRec(5, "hog5")})
			inLogd(5)
			stop()

			// logd comes back restored from the backup: it has 1..3 only.
			j = open(backup)
			require.Equal(t, uint64(3), j.LastWriterSeq(WriterName))
			if withSpill {
				a.Submit([]policy.AuditRecord{coreRec(6, "hog6")})
				k.waitAcked(t, 6) // spilled while logd is down
			}
			serveJournal(t, j, sock, log.Named("logd3"))
			if !withSpill {
				a.Submit([]policy.AuditRecord{coreRec(6, "hog6")})
			}
			k.waitAcked(t, 6)
			a.Submit([]policy.AuditRecord{coreRec(7, "hog7")})
			inLogd(7)

			got := oomdRecords(t, j)
			require.Len(t, got, 6, "%+v", got)
			assert.Equal(t, []policy.AuditRecord{coreRec(1, "hog1"), coreRec(2, "hog2"), coreRec(3, "hog3")}, got[:3])
			gap := got[3]
			assert.Equal(t, uint64(5), gap.WriterSeq, "one gap record, numbered with the last lost writerSeq")
			assert.Equal(t, policy.EventAuditSpilled, gap.Kind)
			assert.Equal(t, "", gap.Subject)
			assert.Contains(t, gap.Reason, "lost: writerSeqs 4..5 ")
			assert.Equal(t, []policy.AuditRecord{coreRec(6, "hog6"), coreRec(7, "hog7")}, got[4:])
		})
	}
}
