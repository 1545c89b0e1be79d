package main

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/testutil"
)

// What the linked oomd must not contain: every function through which a Go program can
// signal another process or start one (a process oomd started could signal for it, and
// os/exec kills its children on context cancel). The names are those of the linked
// binary; the linker drops unreachable functions, so a name is present only if some path
// in oomd can reach it.
//
// Exported wrappers are often inlined and then have no symbol of their own
// (os.FindProcess, os.(*Process).Kill and .Signal, syscall.StartProcess in go1.26):
// they are still named by DWARF as the abstract origin of the inlined call, and what
// they call is not inlinable and is in the symbol table (os.(*Process).signal,
// syscall.Kill, syscall.forkExec). So both tables are read.
//
// Allowed, because every Go binary has them and they signal only oomd itself:
// runtime.tgkill, runtime.raise, runtime.raiseproc, runtime.signalM (preemption and
// crash handling); syscall.doCheckClonePidfd and syscall.rawVforkSyscall (os's probe
// for pidfd support); syscall.RawSyscall/Syscall/Syscall6 and unix.Syscall* (every
// binary links them, so a raw syscall(SYS_KILL) cannot be seen here: the source scan
// in nokill_test.go forbids calling them from oomd's code).
var forbiddenFuncs = map[string]string{
	"syscall.Kill":                          "kill(2)",
	"syscall.Tgkill":                        "tgkill(2)",
	"syscall.Tkill":                         "tkill(2)",
	"syscall.ForkExec":                      "starts a process",
	"syscall.StartProcess":                  "starts a process",
	"syscall.forkExec":                      "starts a process (every fork+exec path ends here)",
	"syscall.Exec":                          "execve(2): replaces oomd by another program",
	"golang.org/x/sys/unix.Kill":            "kill(2)",
	"golang.org/x/sys/unix.Tgkill":          "tgkill(2)",
	"golang.org/x/sys/unix.Tkill":           "tkill(2)",
	"golang.org/x/sys/unix.Killpg":          "killpg(2)",
	"golang.org/x/sys/unix.PidfdSendSignal": "pidfd_send_signal(2)",
	"golang.org/x/sys/unix.PidfdOpen":       "opens a process by pid (for pidfd_send_signal)",
	"golang.org/x/sys/unix.Exec":            "execve(2): replaces oomd by another program",
	"os.(*Process).Kill":                    "signals a process",
	"os.(*Process).Signal":                  "signals a process",
	"os.(*Process).signal":                  "signals a process (Kill and Signal end here)",
	"os.(*Process).kill":                    "signals a process",
	"os.FindProcess":                        "looks a process up by pid",
	"os.StartProcess":                       "starts a process",
	"os.startProcess":                       "starts a process",
}

// forbiddenPackagePrefix: nothing of os/exec may be linked at all.
const forbiddenPackagePrefix = "os/exec."

// Any function of syscall or x/sys/unix with "kill" in its name (Kill, Tgkill, Tkill,
// Killpg, and whatever a later release adds).
var forbiddenKillRE = regexp.MustCompile(`^(syscall|golang\.org/x/sys/unix)\.[A-Za-z0-9_]*(kill|Kill)[A-Za-z0-9_]*$`)

// forbiddenLibc: the same through cgo, as dynamic imports of the host build. (pthread_kill
// and raise are absent on purpose: they signal only the caller's own threads.)
var forbiddenLibc = map[string]bool{
	"kill": true, "killpg": true, "tgkill": true, "tkill": true, "pidfd_send_signal": true,
	"sigqueue": true, "syscall": true, "fork": true, "vfork": true, "clone": true, "clone3": true,
	"execve": true, "execv": true, "execvp": true, "execvpe": true, "execl": true, "execlp": true,
	"execle": true, "fexecve": true, "posix_spawn": true, "posix_spawnp": true, "system": true, "popen": true,
}

func forbiddenReason(name string) (string, bool) {
	name = strings.TrimSuffix(name, ".abi0")
	if why, ok := forbiddenFuncs[name]; ok {
		return why, true
	}
	if strings.HasPrefix(name, forbiddenPackagePrefix) {
		return "package os/exec starts (and kills) processes", true
	}
	if forbiddenKillRE.MatchString(name) {
		return "sends a signal", true
	}
	return "", false
}

// TestOomdBinaryLinksNoWayToSignal is security invariant 1 on the linked binary: oomd
// contains no function that signals or starts a process, however the source spells it
// (an import alias, exec.Command("kill", ...), a method value of *os.Process). Its
// only way to stop a subject is the Terminator capability of its execd session.
//
// It builds oomd twice: as `make build` and the e2e tests do (the environment's
// defaults, cgo on this host), and as scripts/qemu-test.sh does for the VM
// (CGO_ENABLED=0 -trimpath; the VM build also strips, which this one must not).
func TestOomdBinaryLinksNoWayToSignal(t *testing.T) {
	for _, flavour := range []struct {
		name  string
		build testutil.BuildOptions
	}{
		{name: "host"},
		{name: "vm", build: testutil.BuildOptions{Env: []string{"CGO_ENABLED=0"}, Flags: []string{"-trimpath"}}},
	} {
		t.Run(flavour.name, func(t *testing.T) {
			progs, err := testutil.BuildPrograms(flavour.build, "./services/oomd")
			require.NoError(t, err)
			t.Cleanup(progs.Remove)

			f, err := elf.Open(progs.Path("oomd"))
			require.NoError(t, err)
			defer f.Close()
			names := linkedNames(t, f)

			var hits, execSyms []string
			for name, from := range names {
				if strings.HasPrefix(name, forbiddenPackagePrefix) {
					execSyms = append(execSyms, name)
				} else if why, bad := forbiddenReason(name); bad {
					hits = append(hits, name+" ("+from+"): "+why)
				}
			}
			if len(execSyms) > 0 {
				sort.Strings(execSyms)
				hits = append(hits, fmt.Sprintf("%d functions of os/exec (%s, ...): package os/exec starts (and kills) processes",
					len(execSyms), strings.Join(execSyms[:min(3, len(execSyms))], ", ")))
			}
			imported, err := f.ImportedSymbols()
			if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
				require.NoError(t, err)
			}
			for _, s := range imported {
				if forbiddenLibc[s.Name] {
					hits = append(hits, s.Name+" (dynamic import from "+s.Library+"): signals or starts a process through libc")
				}
			}
			sort.Strings(hits)
			if len(hits) > 0 {
				t.Fatalf("oomd must never signal or start a process itself (invariant 1); the linked binary can:\n%s",
					strings.Join(hits, "\n"))
			}
		})
	}
}

// linkedNames is every function name in f's symbol table and in its DWARF (concrete
// functions and the abstract origins of inlined calls), mapped to where it was seen.
// It fails the test if either table is missing, so a stripped build (-ldflags=-s or
// -w, or GOFLAGS carrying them) cannot pass by having nothing to read.
func linkedNames(t *testing.T, f *elf.File) map[string]string {
	t.Helper()
	names := map[string]string{}
	syms, err := f.Symbols()
	require.NoError(t, err, "oomd has no symbol table (built with -ldflags=-s?): the check would be vacuous")
	for _, s := range syms {
		names[s.Name] = "symbol"
	}
	require.Contains(t, names, "main.main", "the symbol table is not a Go program's")
	require.Greater(t, len(syms), 1000, "the symbol table is too small to be oomd's")

	d, err := f.DWARF()
	require.NoError(t, err, "oomd has no DWARF (built with -ldflags=-w?): inlined calls would go unseen")
	r := d.Reader()
	subprograms := 0
	for {
		e, err := r.Next()
		require.NoError(t, err)
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagSubprogram {
			continue
		}
		subprograms++
		if name, ok := e.Val(dwarf.AttrName).(string); ok {
			if _, seen := names[name]; !seen {
				names[name] = "DWARF, inlined"
			}
		}
		r.SkipChildren()
	}
	require.Greater(t, subprograms, 1000, "oomd's DWARF names too few functions to be real")
	return names
}
