package page

import (
	"go/build"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestImports keeps the package small enough for every party to link: execd, oomd and
// any subject import it, so it may use the standard library and golang.org/x/sys only,
// and gen/bounds (the schema's constants; it imports nothing) for the page size.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	require.NoError(t, err)
	for _, imp := range pkg.Imports {
		first, _, _ := strings.Cut(imp, "/")
		allowed := !strings.Contains(first, ".") || strings.HasPrefix(imp, "golang.org/x/sys/") || imp == "oomd.dev/oomd/gen/bounds"
		assert.True(t, allowed, "lib/memstat/page imports %s: only the standard library, golang.org/x/sys and gen/bounds are allowed", imp)
	}
}
