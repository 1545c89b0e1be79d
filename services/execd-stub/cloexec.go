package main

import (
	"fmt"
	"math"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// markInheritedCloseOnExec sets close-on-exec on every fd above 2. os/exec passes any
// fd without the flag to every child; execd passes only what it means to.
func markInheritedCloseOnExec() error {
	err := unix.CloseRange(3, math.MaxUint, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: walk /proc/self/fd instead.
	ents, rerr := os.ReadDir("/proc/self/fd")
	if rerr != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: close_range: %v; /proc/self/fd: %w", err, rerr)
	}
	for _, e := range ents {
		if fd, convErr := strconv.Atoi(e.Name()); convErr == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}
