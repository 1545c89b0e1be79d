package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/services/logd-stub/journal"
)

// TestDamageBecomesACorruptRecord: what recovery found is written into the journal as a
// record of writer "logd" whose reason starts with "corrupt:", readable like any other.
func TestDamageBecomesACorruptRecord(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	j, err := journal.Open(dir, journal.Options{}, log)
	require.NoError(t, err)
	for ws := uint64(1); ws <= 5; ws++ {
		_, err := j.Append("oomd", ws, []byte("opaque"))
		require.NoError(t, err)
	}
	require.NoError(t, j.Close())
	n, err := RecordDamage(context.Background(), j, log)
	require.NoError(t, err)
	assert.Zero(t, n, "a clean journal gets no record")

	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	require.NoError(t, err)
	b, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	b[len(b)-2] ^= 0xff // the last record, acknowledged at Close
	require.NoError(t, os.WriteFile(segs[0], b, 0o600))

	j, err = journal.Open(dir, journal.Options{}, log)
	require.NoError(t, err)
	defer j.Close()
	n, err = RecordDamage(context.Background(), j, log)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	es, _, _, err := j.Read(0, 100, 0)
	require.NoError(t, err)
	last := es[len(es)-1]
	assert.Equal(t, DamageWriter, last.Writer)
	rec, err := decodeRecord(last.Data)
	require.NoError(t, err)
	assert.Equal(t, CorruptKind, rec.Kind())
	reason, err := rec.Reason()
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(reason, "corrupt: segment=00000000000000000001.seg"), reason)
	assert.Contains(t, reason, "lost=5..5")
	assert.Contains(t, reason, "quarantine=00000000000000000001.seg.quarantine.1")
}
