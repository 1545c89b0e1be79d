package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOomdNeverSignalsAProcess is security invariant 1 at the source level: no code in
// oomd (tests aside) can send a signal or look a process up by pid. Its only way to stop
// a subject is the Terminator capability execd gives its session (the e2e tests and
// execd's tests cover who can obtain that capability).
func TestOomdNeverSignalsAProcess(t *testing.T) {
	forbidden := map[string]bool{
		"syscall.Kill": true, "syscall.Tgkill": true, "unix.Kill": true, "unix.Tgkill": true,
		"unix.PidfdSendSignal": true, "unix.PidfdOpen": true, "os.FindProcess": true,
		"syscall.RawSyscall": true, "syscall.Syscall": true, "unix.Syscall": true, "unix.RawSyscall": true,
	}
	files := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		files++
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && forbidden[x.Name+"."+sel.Sel.Name] {
				t.Errorf("%s uses %s.%s: oomd must never signal a process itself", path, x.Name, sel.Sel.Name)
			}
			// cmd.Process.Kill() / .Signal(...).
			if x, ok := sel.X.(*ast.SelectorExpr); ok && x.Sel.Name == "Process" && (sel.Sel.Name == "Signal" || sel.Sel.Name == "Kill") {
				t.Errorf("%s calls Process.%s: oomd must never signal a process itself", path, sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	assert.Greater(t, files, 5, "the scan must have read oomd's sources")
}
