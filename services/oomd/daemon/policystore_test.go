package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/policy"
)

func TestPolicyStoreRoundTripAndVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"softBytes": 1048576, "hardBytes": 2097152}`), 0o600))
	s := FilePolicyStore{Path: path}

	p, v, err := s.LoadPolicyState()
	require.NoError(t, err)
	require.Equal(t, uint64(1), v, "a file without a version file is version 1")
	require.Equal(t, uint64(2<<20), p.HardBytes)

	p.HardBytes = 4 << 20
	p.Signal = policy.SignalKernel
	require.NoError(t, s.Save(p, 7))
	got, v, err := s.LoadPolicyState()
	require.NoError(t, err)
	require.Equal(t, uint64(7), v)
	require.Equal(t, p, got, "what was saved comes back")

	// Edited by hand (or a crash between the two writes): the next version, never an
	// older policy under a newer number; the version file follows.
	require.NoError(t, os.WriteFile(path, []byte(`{"softBytes": 1048576, "hardBytes": 3145728}`), 0o600))
	got, v, err = s.LoadPolicyState()
	require.NoError(t, err)
	require.Equal(t, uint64(8), v)
	require.Equal(t, uint64(3<<20), got.HardBytes)
	_, v, err = s.LoadPolicyState()
	require.NoError(t, err)
	require.Equal(t, uint64(8), v, "stable once recorded")
	require.Equal(t, uint64(8), s.LastVersion())
}

// Save is durable: the policy file, the version file and their directory are fsync'ed,
// and a failed fsync is an error (the policy is then not put in force).
func TestPolicyStoreFsyncs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.json")
	sync := &countingSyncer{}
	s := FilePolicyStore{Path: path, Syncer: sync}
	require.NoError(t, s.Save(policy.DefaultPolicy(), 2))
	require.Equal(t, 4, sync.n, "file + dir for the policy, file + dir for its version")
	sync.err = errors.New("EIO")
	require.ErrorContains(t, s.Save(policy.DefaultPolicy(), 3), "EIO")
}

func TestPolicyStoreRefusesASymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	require.NoError(t, os.WriteFile(target, []byte(`{}`), 0o600))
	link := filepath.Join(dir, "policy.json")
	require.NoError(t, os.Symlink(target, link))
	_, _, err := FilePolicyStore{Path: link}.LoadPolicyState()
	require.Error(t, err)
}
