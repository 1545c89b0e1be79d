package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"oomd.dev/oomd/services/oomd/ctlclient"
)

// dialError says, for a failed connect to the socket at path, what is wrong and what to
// do about it. Errors it does not recognise keep their own text.
func dialError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("oomd is not running: no socket at %s (is the stack up? set --socket or OOMD_SOCKET)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("oomd is not running: nothing accepts connections on %s (a socket left by a stopped oomd? set --socket or OOMD_SOCKET)", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot access %s: permission denied (the socket is owner-only; run as the user that runs oomd)", path)
	case errors.Is(err, ctlclient.ErrNotSocket):
		return fmt.Errorf("%s is not a socket (set --socket or OOMD_SOCKET to oomd's control socket)", path)
	}
	return fmt.Errorf("connect to oomd at %s: %w", path, err)
}

// refusedPolicy reports whether err is oomd refusing a policy, and returns oomd's own
// words for it ("invalid policy: <field> = <value>: must be <bound>"). The text comes
// from policy.ValidationError on oomd's side; over RPC only the text survives.
func refusedPolicy(err error) (string, bool) {
	const marker = "invalid policy: "
	msg := err.Error()
	i := strings.Index(msg, marker)
	if i < 0 {
		return "", false
	}
	return msg[i:], true
}
