package sysoom

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Action is what oomd does once the reboot record is durable.
//
//	exit:N       exit with status N (the host default, exit:0): execd sees the
//	             watchdog end, and a test reads the record
//	command:ARGV run ARGV (split on spaces, no shell), bounded by CommandTimeout, then
//	             exit 0
//	reboot       sync, then reboot(2) (needs CAP_SYS_BOOT, i.e. root in the VM). Never
//	             a default: only an explicit --reboot-action=reboot reboots a machine.
type Action struct {
	Kind string // "exit", "command" or "reboot"
	Code int
	Argv []string
}

// CommandTimeout bounds a command: action.
const CommandTimeout = 30 * time.Second

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
		argv := strings.Fields(arg)
		if len(argv) == 0 {
			return Action{}, fmt.Errorf("reboot action %q: want command:PROGRAM [ARGS...]", s)
		}
		return Action{Kind: kind, Argv: argv}, nil
	case "reboot":
		if arg != "" {
			return Action{}, fmt.Errorf("reboot action %q: reboot takes no argument", s)
		}
		return Action{Kind: kind}, nil
	}
	return Action{}, fmt.Errorf("reboot action %q: want exit:N, command:ARGV or reboot", s)
}

func (a Action) String() string {
	switch a.Kind {
	case "exit":
		return "exit:" + strconv.Itoa(a.Code)
	case "command":
		return "command:" + strings.Join(a.Argv, " ")
	}
	return a.Kind
}

// Run carries the action out. It returns only if the action failed (or for command:,
// after the command ran): the caller then exits with the returned status.
func (a Action) Run() (exitCode int, err error) {
	switch a.Kind {
	case "exit":
		return a.Code, nil
	case "command":
		ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, a.Argv[0], a.Argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return 1, fmt.Errorf("reboot command %v: %w", a.Argv, err)
		}
		return 0, nil
	case "reboot":
		unix.Sync()
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		return 1, fmt.Errorf("reboot(2): %w", err)
	}
	return 1, errors.New("no reboot action configured")
}
