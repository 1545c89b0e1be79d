package rpcx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	capnp "capnproto.org/go/capnp/v3"
	"golang.org/x/sys/unix"
)

// Environment variables through which execd tells a child which inherited fds it got.
const (
	// EnvSessionFD names the fd of the child's connection to execd (bootstrap: Session).
	EnvSessionFD = "OOMD_SESSION_FD"
	// EnvMemstatFD names the fd of the child's memstat delivery socket (SOCK_SEQPACKET):
	// execd passes on it (DeliverConn) a fresh direct connection to each watchdog
	// instance, whose bootstrap is a MemstatSink bound to the child's subject.
	EnvMemstatFD = "OOMD_MEMSTAT_FD"
	// EnvBrokerFD names, in oomd only, the fd on which execd sends SubjectHandoffs.
	EnvBrokerFD = "OOMD_BROKER_FD"
	// EnvSubject is informational only (logs); identity never comes from it.
	EnvSubject = "OOMD_SUBJECT"
)

// Ucred is the peer's credentials as the kernel recorded them at connect time.
type Ucred struct {
	Pid int32
	Uid uint32
	Gid uint32
}

// PeerCred returns SO_PEERCRED of a Unix socket.
func PeerCred(c *net.UnixConn) (*Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return &Ucred{Pid: cred.Pid, Uid: cred.Uid, Gid: cred.Gid}, nil
}

// InheritedConn turns the fd named by the environment variable env into a net.Conn.
// The fd is marked close-on-exec so it does not leak further.
func InheritedConn(env string) (net.Conn, error) {
	s := os.Getenv(env)
	if s == "" {
		return nil, fmt.Errorf("%s is not set: this program must be started by execd", env)
	}
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q is not an inherited fd number (>= 3)", env, s)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), env)
	defer f.Close() // FileConn dups the fd
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("use fd %d from %s as a socket: %w", fd, env, err)
	}
	return c, nil
}

// Socketpair returns two connected Unix stream sockets as files, close-on-exec.
func Socketpair() (a, b *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "socketpair-a"), os.NewFile(uintptr(fds[1]), "socketpair-b"), nil
}

// SeqpacketPair returns two connected SOCK_SEQPACKET sockets: message boundaries are
// kept, so one SendMsgFD is exactly one RecvMsgFD.
func SeqpacketPair() (a, b *net.UnixConn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conv := func(fd int) (*net.UnixConn, error) {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			return nil, err
		}
		return c.(*net.UnixConn), nil
	}
	if a, err = conv(fds[0]); err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	if b, err = conv(fds[1]); err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// MaxPassedMessage bounds one message sent alongside a passed fd.
const MaxPassedMessage = 4096

// MaxPassedFDs bounds the fds one message may carry.
const MaxPassedFDs = 8

// SendMsgFD sends one Cap'n Proto message and one fd on a SOCK_SEQPACKET socket.
func SendMsgFD(c *net.UnixConn, msg *capnp.Message, f *os.File) error {
	return SendMsgFDs(c, msg, f)
}

// SendMsgFDs sends one Cap'n Proto message and 1..MaxPassedFDs fds, in order, on a
// SOCK_SEQPACKET socket.
func SendMsgFDs(c *net.UnixConn, msg *capnp.Message, files ...*os.File) error {
	if len(files) == 0 || len(files) > MaxPassedFDs {
		return fmt.Errorf("sendmsg: %d fds: want 1..%d", len(files), MaxPassedFDs)
	}
	b, err := msg.Marshal()
	if err != nil {
		return fmt.Errorf("marshal: %w", err)
	}
	if len(b) > MaxPassedMessage {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), MaxPassedMessage)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	n, oobn, err := c.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	if err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	if n != len(b) || oobn == 0 {
		return errors.New("sendmsg: short write")
	}
	return nil
}

// RecvMsgFD receives one message and exactly one fd sent by SendMsgFD. Extra fds are
// closed and reported as an error; the returned file is close-on-exec.
func RecvMsgFD(c *net.UnixConn) (*capnp.Message, *os.File, error) {
	msg, files, err := RecvMsgFDs(c)
	if err != nil {
		return nil, nil, err
	}
	if len(files) != 1 {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, fmt.Errorf("expected exactly one passed fd, got %d", len(files))
	}
	return msg, files[0], nil
}

// RecvMsgFDs receives one message and the 1..MaxPassedFDs fds sent with it, in order,
// all close-on-exec. On any error every fd that arrived is closed.
func RecvMsgFDs(c *net.UnixConn) (*capnp.Message, []*os.File, error) {
	buf := make([]byte, MaxPassedMessage+1)
	oob := make([]byte, unix.CmsgSpace(4*(MaxPassedFDs+1)))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	if n == 0 && oobn == 0 {
		return nil, nil, errors.New("peer closed")
	}
	var fds []int
	if scms, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
		for _, scm := range scms {
			if got, err := unix.ParseUnixRights(&scm); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > MaxPassedMessage {
		closeAll()
		return nil, nil, errors.New("passed message truncated or oversized")
	}
	if len(fds) == 0 || len(fds) > MaxPassedFDs {
		closeAll()
		return nil, nil, fmt.Errorf("expected 1..%d passed fds, got %d", MaxPassedFDs, len(fds))
	}
	msg, err := capnp.Unmarshal(append([]byte(nil), buf[:n]...))
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("decode passed message: %w", err)
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		unix.CloseOnExec(fd)
		files[i] = os.NewFile(uintptr(fd), "passed")
	}
	return msg, files, nil
}

// FileToConn turns an fd (a socket) into a net.Conn and closes f.
func FileToConn(f *os.File) (net.Conn, error) {
	defer f.Close()
	return net.FileConn(f)
}
