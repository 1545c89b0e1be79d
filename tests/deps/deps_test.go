// Package deps holds the test that locks the module's layering: what the policy core may
// import, what oomctl may link, that internal/ stays service-neutral, and that only
// tests link internal/testutil. It reads the import graph from `go list -deps -json`,
// so it judges what the build links, not what a file happens to say.
package deps

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "oomd.dev/oomd"

// coreAllowed is every import the policy core, and any package of this module it reaches,
// may have: standard-library packages that do no I/O, read no clock, draw no randomness
// and start no goroutines (io is there for its interfaces: the core decodes a trace from
// an io.Reader it is given), plus two pure leaves of this module. Pinned from what the
// core imported when the test was written; adding to it is a design decision.
var coreAllowed = []string{
	"bytes", "cmp", "encoding/json", "errors", "fmt", "io", "math", "math/bits",
	"slices", "strconv", "strings",
	module + "/gen/bounds",         // the schema's constants; imports nothing
	module + "/internal/subjectid", // the subject-id rule execd shares; imports fmt
}

// cliForbidden are the packages apps/oomctl must not link (prefixes): the daemon with
// its auditor, kernel readers and metrics, and anything of execd or logd. The CLI talks
// to oomd over RPC only; what it shares with oomd lives in policy, policyfile, wire and
// ctlclient.
var cliForbidden = []string{
	module + "/services/oomd/daemon",
	module + "/services/execd-stub",
	module + "/services/logd-stub",
}

type pkg struct {
	ImportPath string
	Dir        string
	Standard   bool
	Imports    []string
	GoFiles    []string
}

// graph returns every package the patterns reach (their -deps closure), by import path.
func graph(t *testing.T, patterns ...string) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps", "-json"}, patterns...)...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Logf("go list: %s", ee.Stderr)
	}
	require.NoError(t, err, "go list -deps -json %v", patterns)
	g := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		err := dec.Decode(&p)
		if err == io.EOF {
			return g
		}
		require.NoError(t, err, "decode go list output")
		g[p.ImportPath] = p
		if inModule(p.ImportPath) {
			// go test caches a result by the files the test process opened; go list's
			// reads are not seen. Listing each package's directory ties the result to the
			// sources, so an added import is not hidden behind "(cached)".
			_, err := os.ReadDir(p.Dir)
			require.NoError(t, err)
			for _, f := range p.GoFiles {
				_, err := os.Stat(filepath.Join(p.Dir, f))
				require.NoError(t, err)
			}
		}
	}
}

// closure returns root and every package it imports, directly or not, sorted.
func closure(g map[string]pkg, root string) []string {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, imp := range g[p].Imports {
			walk(imp)
		}
	}
	walk(root)
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func inModule(p string) bool { return p == module || strings.HasPrefix(p, module+"/") }

// TestPolicyCoreImports keeps the core pure: it and every in-module package it reaches
// import only coreAllowed, and nothing outside the standard library and this module is
// linked at all.
func TestPolicyCoreImports(t *testing.T) {
	core := module + "/services/oomd/policy"
	g := graph(t, core)
	for _, p := range closure(g, core) {
		switch {
		case inModule(p):
			if p != core {
				assert.Contains(t, coreAllowed, p, "the policy core reaches %s, which is not on its allowed list", p)
			}
			for _, imp := range g[p].Imports {
				assert.Contains(t, coreAllowed, imp, "%s imports %s: the policy core allows only %v", p, imp, coreAllowed)
			}
		case !g[p].Standard:
			assert.Fail(t, "the policy core links a package from outside the standard library", p)
		}
	}
}

// TestOomctlLinksNoDaemon: the CLI links no daemon package.
func TestOomctlLinksNoDaemon(t *testing.T) {
	cli := module + "/apps/oomctl"
	g := graph(t, cli)
	for _, p := range closure(g, cli) {
		for _, f := range cliForbidden {
			assert.False(t, p == f || strings.HasPrefix(p, f+"/"), "apps/oomctl links %s (via %s)", p, importer(g, cli, p))
		}
	}
}

// TestInternalIsServiceNeutral: no package under internal/ imports a services/ package,
// directly or not; code shared with one service lives beside that service.
func TestInternalIsServiceNeutral(t *testing.T) {
	g := graph(t, module+"/internal/...")
	var roots []string
	for p := range g {
		if strings.HasPrefix(p, module+"/internal/") {
			roots = append(roots, p)
		}
	}
	require.NotEmpty(t, roots)
	slices.Sort(roots)
	for _, r := range roots {
		for _, p := range closure(g, r) {
			assert.False(t, strings.HasPrefix(p, module+"/services/"), "%s links %s (via %s)", r, p, importer(g, r, p))
		}
	}
}

// testOnly reports whether only tests may link p: internal/testutil (it links package
// testing), the programs under tests/ that tests start, and test-support packages named
// like net/http/httptest (rpcx/rpcxtest, sdnotify/sdnotifytest).
func testOnly(p string) bool {
	switch {
	case p == module+"/internal/testutil", strings.HasPrefix(p, module+"/internal/testutil/"):
		return true
	case strings.HasPrefix(p, module+"/tests/"):
		return true
	}
	return path.Base(p) == path.Base(path.Dir(p))+"test"
}

// TestOnlyTestsImportTestutil: internal/testutil reaches no program a user runs. Only
// _test files (whose imports go list does not count as the package's), the programs
// under tests/progs and test-support packages import it, and only test-only packages
// import those.
func TestOnlyTestsImportTestutil(t *testing.T) {
	testutil := module + "/internal/testutil"
	g := graph(t, module+"/...")
	require.Contains(t, g, testutil)
	require.Contains(t, g, module+"/tests/progs/testchild")
	for p, pk := range g {
		if !inModule(p) {
			continue
		}
		for _, imp := range pk.Imports {
			if testOnly(imp) && !testOnly(p) {
				assert.Fail(t, "a package that is not test-only imports a test-only one",
					"%s imports %s: only _test files, tests/progs and …test packages may", p, imp)
			}
		}
	}
}

// importer names a chain from root to target, for the failure message.
func importer(g map[string]pkg, root, target string) string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == target {
			chain := []string{p}
			for q := prev[p]; q != ""; q = prev[q] {
				chain = append(chain, q)
			}
			slices.Reverse(chain)
			return strings.Join(chain, " -> ")
		}
		for _, imp := range g[p].Imports {
			if _, ok := prev[imp]; !ok {
				prev[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return "?"
}
