package policyfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/safefile"
	"oomd.dev/oomd/services/oomd/policy"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
		check             func(t *testing.T, p policy.Policy)
	}{
		{name: "defaults fill what is not set", in: `{"hardBytes": 1073741824}`, check: func(t *testing.T, p policy.Policy) {
			assert.Equal(t, uint64(1<<30), p.HardBytes)
			assert.Equal(t, policy.DefaultPolicy().SoftBytes, p.SoftBytes)
		}},
		{name: "overrides", in: `{"overrides": [{"subject": "hog", "softBytes": 1, "hardBytes": 2}]}`, check: func(t *testing.T, p policy.Policy) {
			assert.Equal(t, []policy.SubjectLimit{{Subject: "hog", SoftBytes: 1, HardBytes: 2}}, p.Overrides)
		}},
		{name: "unknown field", in: `{"hardBytes": 1, "bogus": 2}`, wantErr: `unknown field "bogus"`},
		{name: "case matters", in: `{"hardbytes": 1073741824}`, wantErr: `unknown field "hardbytes"`},
		{name: "case matters in nested", in: `{"levels": {"OOMBytes": 1}}`, wantErr: `policy.levels: unknown field "OOMBytes"`},
		{name: "syntax error position", in: "{\n  \"hardBytes\": ,\n}", wantErr: "line 2, column 16"},
		{name: "type error names field", in: `{"sampleMs": "fast"}`, wantErr: `field "sampleMs"`},
		{name: "invalid policy names the bound", in: `{"softBytes": 10, "hardBytes": 5}`, wantErr: "hardBytes = 5: must be >= softBytes"},
		{name: "trailing data", in: `{} {}`, wantErr: "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			tc.check(t, p)
		})
	}
}

func TestLoadPolicyFileRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "policy.json")
	require.NoError(t, os.WriteFile(real, []byte(`{}`), 0o600))
	_, err := Load(real)
	require.NoError(t, err)
	link := filepath.Join(dir, "link.json")
	require.NoError(t, os.Symlink(real, link))
	_, err = Load(link)
	require.ErrorIs(t, err, safefile.ErrSymlink)
	assert.Contains(t, err.Error(), link)
	fifo := filepath.Join(dir, "fifo.json")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	_, err = Load(fifo)
	assert.ErrorIs(t, err, safefile.ErrNotRegular, "a FIFO would block the start")
}
