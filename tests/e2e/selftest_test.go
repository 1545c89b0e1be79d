package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHostSelftest runs the same manifest as `make selftest` (with the built binaries)
// and checks every marker, in order, and that execd exits 0 with the selftest.
func TestHostSelftest(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "scripts", "host", "selftest.json"))
	require.NoError(t, err)
	m := string(raw)
	for name := range programs {
		m = strings.ReplaceAll(m, `"argv": ["`+name+`"`, `"argv": ["${BIN}/`+name+`"`)
	}
	s := startStack(t, m, nil)
	require.NoError(t, s.wait(90*time.Second), "execd must exit 0 when the selftest passes")
	want := []string{
		"oomd: ready",
		"SELFTEST: spoof rejected ok",
		"oomd: kill denied (subject=samgrd reason=critical)",
		"SELFTEST: kill denied ok",
		"oomd: kill app=silent bytes=",
		"SELFTEST: kernel kill ok (subject=silent)",
		"oomd: kill app=family bytes=",
		"SELFTEST: family kill ok (subject=family)",
		"oomd: memstat under-reported app=liar kernel=",
		"SELFTEST: under-report detected ok (subject=liar)",
		"oomd: kill app=hog bytes=",
		"SELFTEST: oom kill ok",
	}
	last := -1
	for _, w := range want {
		i := s.lines.index(w)
		require.GreaterOrEqual(t, i, 0, "missing marker %q", w)
		assert.Greater(t, i, last, "marker %q out of order", w)
		last = i
	}
	assert.Equal(t, -1, s.lines.index("SELFTEST: FAILED"))
}
