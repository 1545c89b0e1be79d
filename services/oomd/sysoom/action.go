package sysoom

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Action is what oomd does once the reboot record is durable.
//
//	exit:N       exit with status N (the host default, exit:0): execd sees the
//	             watchdog end, and a test reads the record
//	reboot       sync, then reboot(2) (needs CAP_SYS_BOOT, i.e. root in the VM). Never
//	             a default: only an explicit --reboot-action=reboot reboots a machine.
//
// There is deliberately no action that runs a program: oomd never starts a process
// (execd is the process authority, and a watchdog that can exec can signal);
// TestOomdBinaryLinksNoWayToSignal fails if oomd links os/exec or any fork/exec path.
type Action struct {
	Kind string // "exit" or "reboot"
	Code int
}

// ParseAction parses the --reboot-action value.
func ParseAction(s string) (Action, error) {
	kind, arg, _ := strings.Cut(s, ":")
	switch kind {
	case "exit":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 || n > 255 {
			return Action{}, fmt.Errorf("reboot action %q: want exit:N with N in 0..255", s)
		}
		return Action{Kind: kind, Code: n}, nil
	case "command":
		return Action{}, fmt.Errorf("reboot action %q: command actions were removed; oomd never starts processes (use exit:N and let the supervisor act)", s)
	case "reboot":
		if arg != "" {
			return Action{}, fmt.Errorf("reboot action %q: reboot takes no argument", s)
		}
		return Action{Kind: kind}, nil
	}
	return Action{}, fmt.Errorf("reboot action %q: want exit:N or reboot", s)
}

func (a Action) String() string {
	if a.Kind == "exit" {
		return "exit:" + strconv.Itoa(a.Code)
	}
	return a.Kind
}

// Run carries the action out. It returns only for exit:N or if the action failed: the
// caller then exits with the returned status.
func (a Action) Run() (exitCode int, err error) {
	switch a.Kind {
	case "exit":
		return a.Code, nil
	case "reboot":
		unix.Sync()
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		return 1, fmt.Errorf("reboot(2): %w", err)
	}
	return 1, errors.New("no reboot action configured")
}
