package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
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
	"syscall": {"Syscall": true, "Syscall6": true, "RawSyscall": true, "RawSyscall6": true,
		"AllThreadsSyscall": true, "AllThreadsSyscall6": true},
	"golang.org/x/sys/unix": {"Syscall": true, "Syscall6": true, "RawSyscall": true, "RawSyscall6": true,
		"SyscallNoError": true, "RawSyscallNoError": true},
}

// rawAllowed are the syscalls oomd may make raw (internal/rawsys: reading kernel files
// and the owner loop's clocks without waking the Go scheduler). A raw call passes the
// scan only when its number is one of these constants, written at the call: a number in
// a variable, or a raw entry point taken as a value, does not.
var rawAllowed = map[string]bool{"SYS_PREAD64": true, "SYS_READ": true}

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
			for _, p := range rawSyscallProblems(t, filepath.Join(dir, name)) {
				t.Error(p)
			}
		}
	}
	assert.True(t, sawOomd, "go list did not list oomd itself")
	assert.Greater(t, files, 30, "the scan must have read oomd's sources and its module dependencies")
}

// rawSyscallProblems lists what in the Go file at path could make a syscall this scan
// cannot vouch for.
func rawSyscallProblems(t *testing.T, path string) (problems []string) {
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
			problems = append(problems, fmt.Sprintf("%s: dot import of %s would hide its raw syscalls from this scan", fset.Position(imp.Pos()), p))
		}
		local[name] = p
	}
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			if strings.HasPrefix(c.Text, "//go:linkname") {
				problems = append(problems, fmt.Sprintf("%s: //go:linkname reaches functions the linked-binary check cannot attribute", fset.Position(c.Pos())))
			}
		}
	}
	allowed := map[*ast.SelectorExpr]bool{} // raw calls whose number is an allowed constant
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		fn, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		num, ok := call.Args[0].(*ast.SelectorExpr)
		if !ok {
			return true
		}
		// Both names must be the imported packages, not locals that shadow them (a
		// local has a parser object; an imported package name has none).
		fx, ok1 := fn.X.(*ast.Ident)
		nx, ok2 := num.X.(*ast.Ident)
		if ok1 && ok2 && fx.Obj == nil && nx.Obj == nil && rawSyscalls[local[nx.Name]] != nil && rawAllowed[num.Sel.Name] {
			allowed[fn] = true
		}
		return true
	})
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || allowed[sel] {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); ok && x.Obj == nil && rawSyscalls[local[x.Name]][sel.Sel.Name] {
			problems = append(problems, fmt.Sprintf("%s: %s.%s makes a raw syscall (e.g. SYS_KILL): oomd must never signal a process itself",
				fset.Position(sel.Pos()), local[x.Name], sel.Sel.Name))
		}
		return true
	})
	return problems
}

// TestRawSyscallScanCatches: the scan passes a raw pread or read by constant and flags
// every other raw call: SYS_KILL, a number in a variable, an entry point taken as a value.
func TestRawSyscallScanCatches(t *testing.T) {
	for name, c := range map[string]struct {
		body string
		bad  bool
	}{
		"pread by constant": {`_, _, _ = unix.RawSyscall6(unix.SYS_PREAD64, 0, 0, 0, 0, 0, 0)`, false},
		"read by constant":  {`_, _, _ = unix.RawSyscall(unix.SYS_READ, 0, 0, 0)`, false},
		"kill":              {`_, _, _ = unix.RawSyscall(unix.SYS_KILL, 1, 9, 0)`, true},
		"kill via syscall":  {`_, _, _ = syscall.Syscall(syscall.SYS_KILL, 1, 9, 0)`, true},
		"number in a var":   {`n := uintptr(unix.SYS_READ); _, _, _ = unix.RawSyscall(n, 0, 0, 0)`, true},
		"entry as a value":  {`f := unix.RawSyscall; _, _, _ = f(unix.SYS_READ, 0, 0, 0)`, true},
		"all threads":       {`_, _, _ = syscall.AllThreadsSyscall(syscall.SYS_KILL, 1, 9, 0)`, true},
		"shadowed constant": {`unix := struct{ SYS_READ uintptr }{syscall.SYS_KILL}; _, _, _ = syscall.RawSyscall(unix.SYS_READ, 1, 9, 0)`, true},
		"shadowed param":    {`g := func(unix struct{ SYS_PREAD64 uintptr }) { _, _, _ = syscall.RawSyscall6(unix.SYS_PREAD64, 1, 9, 0, 0, 0, 0) }; g(struct{ SYS_PREAD64 uintptr }{62})`, true},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.go")
			src := "package x\n\nimport (\n\t\"syscall\"\n\n\t\"golang.org/x/sys/unix\"\n)\n\nvar _ = syscall.SYS_READ\n\nfunc f() {\n\t" + c.body + "\n}\n"
			require.NoError(t, os.WriteFile(path, []byte(src), 0o600))
			problems := rawSyscallProblems(t, path)
			assert.Equal(t, c.bad, len(problems) > 0, "scan of %q: %v", c.body, problems)
		})
	}
}
