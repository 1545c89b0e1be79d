package ctlclient

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// Why DialOnce could not reach oomd. Each is wrapped together with the OS error, so a
// caller can tell "no socket" (fs.ErrNotExist) from "nothing listening"
// (syscall.ECONNREFUSED) when it explains the failure to a user.
var (
	// ErrNotRunning: there is no socket at the path, or nothing accepts on it.
	ErrNotRunning = errors.New("oomd is not running")
	// ErrNoAccess: the socket, or a directory on its path, is not accessible to us.
	ErrNoAccess = errors.New("oomd's control socket is not accessible")
	// ErrNotSocket: something other than a socket is at the path.
	ErrNotSocket = errors.New("not a socket")
)

// DialOnce connects to oomd's control socket exactly once, for tools that must fail at
// once when oomd is down rather than wait for it as Dial does. It does not subscribe to
// events (a one-shot query should not make oomd push its whole ring), so WaitEvent and
// Events see nothing on the returned Client; subscribe through Ctl where needed. ctx
// bounds the connect and the bootstrap.
func DialOnce(ctx context.Context, path string, log *zap.Logger) (*Client, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, classify(err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("%s: %w (mode %s)", path, ErrNotSocket, fi.Mode())
	}
	conn, boot, err := rpcx.Dial(ctx, path, log)
	if err != nil {
		return nil, classify(err)
	}
	return &Client{conn: conn, Ctl: oomdpb.Control(boot), wake: make(chan struct{}, 1)}, nil
}

func classify(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %w", ErrNotRunning, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", ErrNoAccess, err)
	}
	return err
}
