package policy

import (
	"go/build"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestImports keeps the core pure: the standard library only (and two pure in-repo leaves), and none of it that
// reaches the outside world, a clock, randomness or goroutine coordination. Metrics,
// wall time and I/O belong to the shell (services/oomd/daemon).
func TestImports(t *testing.T) {
	forbidden := []string{"os", "net", "time", "math/rand", "crypto/rand", "sync", "syscall", "runtime", "io/fs", "log"}
	pkg, err := build.ImportDir(".", 0)
	require.NoError(t, err)
	for _, imp := range pkg.Imports {
		first, _, _ := strings.Cut(imp, "/")
		// Two in-repo leaves: the subject-id rule execd shares (imports fmt) and the schema's
		// bounds (imports nothing).
		if imp != "oomd.dev/oomd/internal/subjectid" && imp != "oomd.dev/oomd/gen/bounds" {
			assert.NotContains(t, first, ".", "the policy core imports %s: only the standard library is allowed", imp)
		}
		for _, f := range forbidden {
			assert.False(t, imp == f || strings.HasPrefix(imp, f+"/"), "the policy core imports %s: no I/O, clock, randomness or locks in the core", imp)
		}
	}
}
