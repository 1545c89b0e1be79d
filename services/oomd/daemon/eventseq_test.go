package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type countSyncs struct{ n int }

func (c *countSyncs) Sync(f *os.File) error { c.n++; return f.Sync() }

// TestEventSeqFile: each run starts above every seq an earlier run could have handed
// out, and the mark is written once per batch, not once per event.
func TestEventSeqFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json.eventseq")
	var syncs countSyncs

	f, base, err := OpenEventSeq(path, &syncs)
	require.NoError(t, err)
	assert.Zero(t, base, "first run")
	assert.Equal(t, uint64(EventSeqBatch), f.Reserved(), "the first batch is reserved at start")
	opened := syncs.n
	for seq := uint64(1); seq <= EventSeqBatch; seq++ {
		require.NoError(t, f.Cover(seq))
	}
	assert.Equal(t, opened, syncs.n, "no fsync inside the reserved batch")
	require.NoError(t, f.Cover(EventSeqBatch+1))
	assert.Greater(t, syncs.n, opened, "the next batch is made durable")
	used := uint64(EventSeqBatch + 1)

	// A restart (nothing was flushed on the way out): the new base is above every seq used.
	f2, base2, err := OpenEventSeq(path, nil)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, base2, used)
	assert.Equal(t, f.Reserved(), base2)
	assert.Greater(t, f2.Reserved(), base2)
}

// TestEventSeqFileDamaged: a damaged mark is reported (the caller logs it) and the file
// is rewritten so the following run has one again.
func TestEventSeqFileDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq")
	require.NoError(t, os.WriteFile(path, []byte("{\"reserv"), 0o600))
	f, base, err := OpenEventSeq(path, nil)
	require.ErrorIs(t, err, ErrEventSeqDamaged)
	require.NotNil(t, f)
	assert.Zero(t, base)
	_, base2, err := OpenEventSeq(path, nil)
	require.NoError(t, err)
	assert.Equal(t, f.Reserved(), base2)
}
