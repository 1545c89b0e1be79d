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
// and the owner loop's clocks without waking the Go scheduler; internal/uring: the same
// reads, batched). A raw call passes the scan only when its number is one of these
// constants, written at the call: a number in a variable, or a raw entry point taken as
// a value, does not. io_uring has no operation that signals a process, and
// TestUringSubmitsOnlyReads holds internal/uring to reads.
var rawAllowed = map[string]bool{"SYS_PREAD64": true, "SYS_READ": true, "SYS_IO_URING_SETUP": true, "SYS_IO_URING_ENTER": true}

// uringOnly are the raw calls allowed only in internal/uring's own files: a ring set up
// anywhere else would escape TestUringSubmitsOnlyReads.
var uringOnly = map[string]bool{"SYS_IO_URING_SETUP": true, "SYS_IO_URING_ENTER": true}

// inUring reports whether path is a file of internal/uring.
func inUring(path string) bool {
	return filepath.Base(filepath.Dir(path)) == "uring" && filepath.Base(filepath.Dir(filepath.Dir(path))) == "internal"
}

// TestUringSubmitsOnlyReads: an io_uring runs whatever operations are put in its
// submission queue, so the ring oomd sets up is allowed by the scan above only because
// every submission internal/uring writes is a read: each SQE's opcode, wherever one is
// written (a keyed literal, an assignment of one or several targets), is the constant
// opRead (22, IORING_OP_READ), and no sqe literal leaves its fields unnamed. (A write
// through unsafe to the SQE memory would pass; the package has one, the keyed literal.)
func TestUringSubmitsOnlyReads(t *testing.T) {
	dir := filepath.Join("..", "..", "internal", "uring")
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	require.NoError(t, err)
	opcodes := 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			var key, val ast.Expr
			switch n := n.(type) {
			case *ast.KeyValueExpr:
				key, val = n.Key, n.Value
			case *ast.AssignStmt:
				for i, lhs := range n.Lhs {
					if sel, ok := lhs.(*ast.SelectorExpr); ok && sel.Sel.Name == "opcode" {
						opcodes++
						var v ast.Expr
						if len(n.Rhs) == len(n.Lhs) {
							v = n.Rhs[i]
						}
						id, ok := v.(*ast.Ident)
						assert.True(t, ok && id.Name == "opRead", "%s: an SQE opcode other than opRead", name)
					}
				}
			case *ast.CompositeLit:
				if id, ok := n.Type.(*ast.Ident); ok && id.Name == "sqe" {
					for _, e := range n.Elts {
						_, keyed := e.(*ast.KeyValueExpr)
						assert.True(t, keyed, "%s: an sqe literal without field names could set the opcode unseen", name)
					}
				}
			case *ast.ValueSpec:
				for i, id := range n.Names {
					if id.Name == "opRead" {
						require.Len(t, n.Values, len(n.Names))
						assert.Equal(t, "22", n.Values[i].(*ast.BasicLit).Value, "opRead is IORING_OP_READ")
					}
				}
			}
			if id, ok := key.(*ast.Ident); ok && id.Name == "opcode" {
				opcodes++
				v, ok := val.(*ast.Ident)
				assert.True(t, ok && v.Name == "opRead", "%s: an SQE opcode other than opRead", name)
			}
			return true
		})
	}
	assert.Positive(t, opcodes, "the scan found where internal/uring writes an opcode")
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
		if ok1 && ok2 && fx.Obj == nil && nx.Obj == nil && rawSyscalls[local[nx.Name]] != nil && rawAllowed[num.Sel.Name] &&
			(!uringOnly[num.Sel.Name] || inUring(path)) {
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
		"pread by constant":               {`_, _, _ = unix.RawSyscall6(unix.SYS_PREAD64, 0, 0, 0, 0, 0, 0)`, false},
		"read by constant":                {`_, _, _ = unix.RawSyscall(unix.SYS_READ, 0, 0, 0)`, false},
		"kill":                            {`_, _, _ = unix.RawSyscall(unix.SYS_KILL, 1, 9, 0)`, true},
		"kill via syscall":                {`_, _, _ = syscall.Syscall(syscall.SYS_KILL, 1, 9, 0)`, true},
		"number in a var":                 {`n := uintptr(unix.SYS_READ); _, _, _ = unix.RawSyscall(n, 0, 0, 0)`, true},
		"entry as a value":                {`f := unix.RawSyscall; _, _, _ = f(unix.SYS_READ, 0, 0, 0)`, true},
		"all threads":                     {`_, _, _ = syscall.AllThreadsSyscall(syscall.SYS_KILL, 1, 9, 0)`, true},
		"shadowed constant":               {`unix := struct{ SYS_READ uintptr }{syscall.SYS_KILL}; _, _, _ = syscall.RawSyscall(unix.SYS_READ, 1, 9, 0)`, true},
		"shadowed param":                  {`g := func(unix struct{ SYS_PREAD64 uintptr }) { _, _, _ = syscall.RawSyscall6(unix.SYS_PREAD64, 1, 9, 0, 0, 0, 0) }; g(struct{ SYS_PREAD64 uintptr }{62})`, true},
		"io_uring outside internal/uring": {`_, _, _ = unix.RawSyscall(unix.SYS_IO_URING_SETUP, 1, 0, 0)`, true},
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
