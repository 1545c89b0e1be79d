package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rawSyscalls are the entry points through which any syscall can be made by number.
var rawSyscalls = map[string]map[string]bool{
	"syscall": {"Syscall": true, "Syscall6": true, "RawSyscall": true, "RawSyscall6": true},
	"golang.org/x/sys/unix": {"Syscall": true, "Syscall6": true, "RawSyscall": true, "RawSyscall6": true,
		"SyscallNoError": true, "RawSyscallNoError": true},
}

// TestOomdMakesNoRawSyscall is the part of invariant 1 that the linked binary cannot
// show (TestOomdBinaryLinksNoWayToSignal checks the rest): every Go binary links the raw
// syscall entry points, so syscall.Syscall(SYS_KILL, ...) would leave no trace among
// oomd's symbols. So no package of this module that oomd links (as `go list -deps`
// says, not a directory walk) may call them, hide its calls behind a dot import of
// syscall or x/sys/unix, reach past the linker with //go:linkname, or carry assembly.
// Imports are resolved by path, so an alias (sc "syscall") hides nothing.
func TestOomdMakesNoRawSyscall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}{{"\t"}}{{join .GoFiles " "}} {{join .CgoFiles " "}}{{"\t"}}{{join .SFiles " "}}{{"\n"}}{{end}}{{end}}`,
		".").Output()
	require.NoError(t, err, "go list -deps: %s", out)
	files, sawOomd := 0, false
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		dir, rest, _ := strings.Cut(line, "\t")
		gofiles, sfiles, _ := strings.Cut(rest, "\t")
		sawOomd = sawOomd || strings.HasSuffix(dir, filepath.Join("services", "oomd"))
		if strings.TrimSpace(sfiles) != "" {
			t.Errorf("%s has assembly (%s): it could make any syscall unseen", dir, sfiles)
		}
		for _, name := range strings.Fields(gofiles) {
			files++
			checkNoRawSyscall(t, filepath.Join(dir, name))
		}
	}
	assert.True(t, sawOomd, "go list did not list oomd itself")
	assert.Greater(t, files, 30, "the scan must have read oomd's sources and its module dependencies")
}

func checkNoRawSyscall(t *testing.T, path string) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
	require.NoError(t, err)
	local := map[string]string{} // local name -> import path, for the packages above
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if rawSyscalls[p] == nil {
			continue
		}
		name := p[strings.LastIndex(p, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		if name == "." {
			t.Errorf("%s: dot import of %s would hide its raw syscalls from this scan", fset.Position(imp.Pos()), p)
		}
		local[name] = p
	}
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			if strings.HasPrefix(c.Text, "//go:linkname") {
				t.Errorf("%s: //go:linkname reaches functions the linked-binary check cannot attribute", fset.Position(c.Pos()))
			}
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); ok && rawSyscalls[local[x.Name]][sel.Sel.Name] {
			t.Errorf("%s: %s.%s makes a raw syscall (e.g. SYS_KILL): oomd must never signal a process itself",
				fset.Position(sel.Pos()), local[x.Name], sel.Sel.Name)
		}
		return true
	})
}
