// Package session is a child's side of its execd session: the inherited connection whose
// bootstrap is the child's own oomdpb.Session.
package session

import (
	"context"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"go.uber.org/zap"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// Session is an open execd session. Keep it open for the life of the process: execd
// notices a child's exit through its pidfd, not through this connection, but the
// session carries the child's capabilities (grants) and readiness.
type Session struct {
	conn   *rpc.Conn
	Client oomdpb.Session
}

// Open connects to the session execd gave this process (OOMD_SESSION_FD).
func Open(ctx context.Context, log *zap.Logger) (*Session, error) {
	c, err := rpcx.InheritedConn(rpcx.EnvSessionFD)
	if err != nil {
		return nil, err
	}
	conn := rpcx.NewConn(c, capnp.Client{}, log)
	return &Session{conn: conn, Client: oomdpb.Session(conn.Bootstrap(ctx))}, nil
}

// Ready tells execd this process is up, so its dependents may start.
func (s *Session) Ready(ctx context.Context) error {
	f, rel := s.Client.Ready(ctx, nil)
	defer rel()
	if _, err := f.Struct(); err != nil {
		return fmt.Errorf("session ready: %w", err)
	}
	return nil
}

// Whoami returns the identity execd bound to this session.
func (s *Session) Whoami(ctx context.Context) (subject string, instance uint64, critical bool, err error) {
	f, rel := s.Client.Whoami(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return "", 0, false, fmt.Errorf("session whoami: %w", err)
	}
	subject, err = res.Subject()
	return subject, res.Instance(), res.Critical(), err
}

// Grants returns the watchdog's capabilities. execd gives them to the watchdog's
// session only; any other caller gets execd's error.
func (s *Session) Grants(ctx context.Context) (oomdpb.Terminator, oomdpb.SystemControl, error) {
	f, rel := s.Client.Grants(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return oomdpb.Terminator{}, oomdpb.SystemControl{}, fmt.Errorf("session grants: %w", err)
	}
	return res.Terminator().AddRef(), res.System().AddRef(), nil
}

// Done is closed when execd goes away.
func (s *Session) Done() <-chan struct{} { return s.conn.Done() }

// Close releases the session and closes the connection.
func (s *Session) Close() error {
	s.Client.Release()
	return s.conn.Close()
}
