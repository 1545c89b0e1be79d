// Package cgroup gives every subject execd spawns a cgroup of its own, so the kernel
// counts all of the subject's memory (every descendant included) and execd can stop
// the whole subject, not only its first process.
//
// # Modes
//
// Detect picks, once at start, the strongest mode this machine allows:
//
//	v2    cgroup2 with the memory controller (the VM, where execd as PID 1 mounts cgroup2;
//	      a systemd service with Delegate=yes; a container with a cgroup namespace).
//	      The child is forked straight into its cgroup with CLONE_INTO_CGROUP
//	      (SysProcAttr.UseCgroupFD), so not one instruction of it runs outside.
//	v1    the cgroup v1 memory hierarchy (older hosts, and this project's CI host, where
//	      v2 has no memory controller). v1 has no CLONE_INTO_CGROUP, so the child is
//	      started through a shim: execd's own binary, re-executed under ShimArg0, writes
//	      itself into the cgroup and only then execve()s the subject's program. The shim is
//	      execd's code; the subject's code never runs outside its cgroup.
//	proc  neither is writable: the subject's process tree and process group are read
//	      from /proc. This is weaker and said so in logs, status and docs: a process
//	      that leaves its process group and is re-parented escapes, and the sum of RSS
//	      is not what the kernel charges.
//
// # Layout
//
// Subject cgroups live in a parent of their own, named after execd's pid
// (oomd-execd.<pid>), created inside the cgroup execd runs in, so several execds on
// one host (tests) never share one. A subject instance's cgroup is <subject>.<instance>.
// Empty parents left by an execd that died are removed at the next Detect.
//
// # Reading and stopping
//
// OpenUsage hands out read-only fds for the kernel's count (memory.current or
// memory.usage_in_bytes, plus memory.stat for the working set): execd passes them to
// oomd, which gets the right to read one number and no authority over the cgroup.
// Signal reaches every process of the group through a pidfd, checking membership after
// opening it so a recycled pid is never signalled; Kill uses cgroup.kill where the
// kernel has it (v2, Linux >= 5.14) and otherwise SIGKILLs until cgroup.procs is empty.
package cgroup
