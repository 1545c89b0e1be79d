package cgroup

import (
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// ShimArg0 is argv[0] of execd's binary re-executed as the v1 joining shim:
//
//	ShimArg0 <cgroup.procs path> <program path> <argv[0]> <argv[1:]...>
//
// The shim writes itself into the cgroup, then execve()s the program with the
// environment it was given. Any binary that links this package acts as the shim when
// started that way (init below), so execd and its tests need no second binary.
const ShimArg0 = "oomd-cgroup-join"

// ShimExitCode is the shim's exit status when it could not join or exec.
const ShimExitCode = 126

func init() {
	if len(os.Args) >= 4 && os.Args[0] == ShimArg0 {
		os.Exit(runShim(os.Args[1], os.Args[2], os.Args[3:]))
	}
}

func runShim(procs, path string, argv []string) int {
	if err := writeFile(procs, "0"); err != nil {
		fmt.Fprintf(os.Stderr, "execd: cannot join cgroup %s: %v\n", procs, err)
		return ShimExitCode
	}
	err := unix.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "execd: exec %s: %v\n", path, err)
	return ShimExitCode
}

// wrapShim makes cmd start as the shim, which joins procs and then runs what cmd would
// have run. cmd.Path must be resolved (exec.Command does that).
func wrapShim(cmd *exec.Cmd, procs string) {
	self := "/proc/self/exe"
	args := append([]string{ShimArg0, procs, cmd.Path}, cmd.Args...)
	cmd.Path = self
	cmd.Args = args
}
