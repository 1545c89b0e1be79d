// Package rpcx is the Cap'n Proto plumbing shared by every oomd process: connections with
// a bounded message size, an accept loop that gives each connection its own bootstrap
// object and keeps every connection so shutdown can close them, a zap adapter for the
// rpc logger, and helpers for inherited and passed file descriptors.
//
// It exists so that the go-capnp traps listed in docs/capnp-traps.md are handled once:
// rpc.Serve shares one bootstrap across connections (we never use it), the rpc logger
// reports every peer disconnect at ERROR (we demote it), and an oversized frame must
// close only that connection (the bounded codec does), and a peer that writes calls
// without reading the answers must not grow this side without bound (limit.go).
package rpcx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	"go.uber.org/zap"
)

// DefaultMaxMessageBytes bounds one Cap'n Proto frame on every oomd connection. The
// largest legitimate message is an events or audit page (1024 entries of a few hundred
// bytes); anything larger is a broken or hostile peer and closes that connection.
const DefaultMaxMessageBytes = 1 << 20

// NewLimitedTransport wraps rwc in a Cap'n Proto stream transport that enforces lim.
func NewLimitedTransport(rwc io.ReadWriteCloser, lim Limits, log *zap.Logger) transport.Transport {
	return transport.New(newLimitCodec(rwc, lim, log))
}

// NewConn starts a Cap'n Proto connection on rwc with DefaultLimits. bootstrap (may be
// the zero Client) is what the peer gets from Bootstrap; the connection takes over that
// reference.
func NewConn(rwc io.ReadWriteCloser, bootstrap capnp.Client, log *zap.Logger) *rpc.Conn {
	return NewLimitedConn(rwc, bootstrap, log, DefaultLimits)
}

// NewLimitedConn is NewConn with explicit limits (e.g. PublisherLimits for a connection
// from an untrusted subject).
func NewLimitedConn(rwc io.ReadWriteCloser, bootstrap capnp.Client, log *zap.Logger, lim Limits) *rpc.Conn {
	return rpc.NewConn(NewLimitedTransport(rwc, lim, log), &rpc.Options{
		BootstrapClient: bootstrap,
		Logger:          Logger(log),
	})
}

// Logger adapts zap to go-capnp's rpc.Logger. go-capnp logs a peer's ordinary
// disconnect at ERROR; those are demoted to DEBUG so real errors stay visible.
func Logger(log *zap.Logger) rpc.Logger {
	if log == nil {
		log = zap.NewNop()
	}
	return rpcLogger{log.Named("rpc").Sugar()}
}

type rpcLogger struct{ s *zap.SugaredLogger }

func (l rpcLogger) Debug(msg string, args ...any) { l.s.Debugw(msg, args...) }
func (l rpcLogger) Info(msg string, args ...any)  { l.s.Debugw(msg, args...) }
func (l rpcLogger) Warn(msg string, args ...any)  { l.s.Warnw(msg, args...) }
func (l rpcLogger) Error(msg string, args ...any) {
	if isDisconnectNoise(msg, args) || isReported(msg, args) {
		l.s.Debugw(msg, args...)
		return
	}
	l.s.Errorw(msg, args...)
}

// disconnectNoise are the phrases of go-capnp's ordinary end-of-connection reports.
var disconnectNoise = []string{
	"EOF", "connection closed", "use of closed network connection", "broken pipe",
	"connection reset by peer", "disconnected", "context canceled",
}

// isReported: the codec has already logged why it closed the connection (a guard rule,
// a frame deadline), rate-limited; go-capnp's report of the same reader error would
// repeat it at ERROR, once per hostile connection.
func isReported(msg string, args []any) bool {
	text := msg + fmt.Sprint(args...)
	return strings.Contains(text, "protocol guard") || strings.Contains(text, "i/o timeout")
}

func isDisconnectNoise(msg string, args []any) bool {
	text := msg + fmt.Sprint(args...)
	for _, s := range disconnectNoise {
		if strings.Contains(text, s) {
			return true
		}
	}
	return false
}

// ErrSocketInUse means another live process serves the socket path.
var ErrSocketInUse = errors.New("socket is in use by a running process")

// Listen opens a Unix socket at path that only the owner may connect to. A stale socket
// left by a dead process is removed; a live one, or anything that is not a socket, is
// left alone and reported. The directory should itself be private.
func Listen(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: %w", path, ErrSocketInUse)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket %s to its owner: %w", path, err)
	}
	return l, nil
}

// Dial connects to the Unix socket at path and returns the connection and the peer's
// bootstrap capability of type T (use e.g. oomdpb.Control). The caller releases the
// client and closes the conn.
func Dial(ctx context.Context, path string, log *zap.Logger) (*rpc.Conn, capnp.Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, capnp.Client{}, fmt.Errorf("connect to %s: %w", path, err)
	}
	conn := NewConn(c, capnp.Client{}, log)
	client := conn.Bootstrap(ctx)
	if err := client.Resolve(ctx); err != nil {
		client.Release()
		conn.Close()
		return nil, capnp.Client{}, fmt.Errorf("bootstrap from %s: %w", path, err)
	}
	return conn, client, nil
}

// Peer describes an accepted connection, for building its bootstrap object.
type Peer struct {
	Conn net.Conn
	Cred *Ucred // nil if the kernel gave none
}

// Server runs an accept loop with one bootstrap object per connection and keeps every
// live connection so Close can end them all.
type Server struct {
	log       *zap.Logger
	bootstrap func(Peer) (capnp.Client, error)
	lim       Limits
	maxConns  int
	gate      *logGate

	mu     sync.Mutex
	conns  map[*rpc.Conn]*limitCodec
	closed bool
	wg     sync.WaitGroup
}

// Server defaults: DefaultLimits, and these.
const (
	// DefaultMaxConns bounds a socket's live connections.
	DefaultMaxConns = 64
	// DefaultFirstMessageTimeout: a peer must complete its first message this soon
	// after connecting (an honest client sends Bootstrap at once).
	DefaultFirstMessageTimeout = 5 * time.Second
	// DefaultFrameTimeout: once a frame has started, the rest must follow this soon.
	DefaultFrameTimeout = 10 * time.Second
	// serverLogInterval: at most one refusal or guard line per socket this often.
	serverLogInterval = time.Second
)

// A ServerOption configures a Server.
type ServerOption func(*Server)

// WithGuard checks every incoming message of every connection against g.
func WithGuard(g *Guard) ServerOption { return func(s *Server) { s.lim.Guard = g } }

// WithMaxConns bounds the live connections (DefaultMaxConns if not given).
func WithMaxConns(n int) ServerOption { return func(s *Server) { s.maxConns = n } }

// WithTimeouts sets Limits.FirstMessageTimeout and FrameTimeout (0 keeps the default).
func WithTimeouts(first, frame time.Duration) ServerOption {
	return func(s *Server) {
		if first > 0 {
			s.lim.FirstMessageTimeout = first
		}
		if frame > 0 {
			s.lim.FrameTimeout = frame
		}
	}
}

// NewServer returns a server whose connections get the bootstrap object that newBoot
// builds for them. If newBoot fails, that connection is closed and the error logged.
func NewServer(log *zap.Logger, newBoot func(Peer) (capnp.Client, error), opts ...ServerOption) *Server {
	s := &Server{log: log, bootstrap: newBoot, conns: make(map[*rpc.Conn]*limitCodec),
		lim: DefaultLimits, maxConns: DefaultMaxConns, gate: newLogGate(serverLogInterval)}
	s.lim.FirstMessageTimeout = DefaultFirstMessageTimeout
	s.lim.FrameTimeout = DefaultFrameTimeout
	for _, o := range opts {
		o(s)
	}
	s.lim.logGate = s.gate
	return s
}

// Serve accepts until l is closed or ctx ends. It returns nil on an orderly stop.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.ServeConn(c)
	}
}

// admit makes room for one more connection. At the bound, the oldest connection that
// has not completed a first message yet is closed to make room (a peer that connects
// and sends nothing holds a slot only until a newcomer needs it); if every connection
// is past its first message, the newcomer is refused.
func (s *Server) admit() bool {
	s.mu.Lock()
	if s.maxConns <= 0 || len(s.conns) < s.maxConns {
		s.mu.Unlock()
		return true
	}
	var victim *rpc.Conn
	var oldest time.Time
	for conn, codec := range s.conns {
		if !codec.hasFramed() && (victim == nil || codec.start.Before(oldest)) {
			victim, oldest = conn, codec.start
		}
	}
	if victim != nil {
		delete(s.conns, victim) // counted as gone now; its goroutine ends with it
	}
	n := len(s.conns)
	s.mu.Unlock()
	if victim == nil {
		s.gate.warn(s.log, "refused connection: too many connections", zap.Int("conns", n), zap.Int("max", s.maxConns))
		return false
	}
	s.gate.warn(s.log, "closed a connection without a first message to make room", zap.Int("max", s.maxConns))
	go victim.Close()
	return true
}

// ServeConn serves one already-connected socket (accepted, inherited or passed).
// It returns the rpc connection, or nil if the server is closed, full, or the
// bootstrap could not be built.
func (s *Server) ServeConn(c net.Conn) *rpc.Conn {
	if !s.admit() {
		c.Close()
		return nil
	}
	peer := Peer{Conn: c}
	if uc, ok := c.(*net.UnixConn); ok {
		peer.Cred, _ = PeerCred(uc)
	}
	boot, err := s.bootstrap(peer)
	if err != nil {
		s.log.Warn("refused connection", zap.Error(err))
		c.Close()
		return nil
	}
	codec := newLimitCodec(c, s.lim, s.log)
	conn := rpc.NewConn(transport.New(codec), &rpc.Options{BootstrapClient: boot, Logger: Logger(s.log)})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return nil
	}
	s.conns[conn] = codec
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		<-conn.Done()
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	return conn
}

// Conns is the number of live connections.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close closes every connection and waits (at most timeout) for them to finish.
// go-capnp's Conn.Close can hang when a handler waits on the same connection
// (docs/capnp-traps.md, trap 2), so the wait is bounded.
func (s *Server) Close(timeout time.Duration) {
	s.mu.Lock()
	s.closed = true
	conns := make([]*rpc.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		go c.Close()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		s.log.Warn("connections still open after shutdown timeout", zap.Int("conns", len(conns)))
	}
}
