package rpcx

import (
	"fmt"
	"net"
	"os"

	capnp "capnproto.org/go/capnp/v3"
)

// A delivery socket is a SOCK_SEQPACKET socket on which one process passes another a
// freshly connected stream socket, one per message (execd hands every child its memstat
// connection this way, a new one each time a watchdog instance appears). The message
// that carries the fd is an empty Cap'n Proto struct: the fd is the whole content, and
// who sent it is the kernel's word (only execd holds the other end).

// DeliverConn passes f (a connected socket) on the delivery socket c. The caller keeps
// f and closes it afterwards: the receiver gets its own copy.
func DeliverConn(c *net.UnixConn, f *os.File) error {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return err
	}
	if _, err := capnp.NewRootStruct(seg, capnp.ObjectSize{}); err != nil {
		return err
	}
	return SendMsgFD(c, msg, f)
}

// ReceiveConn waits for the next socket passed with DeliverConn and returns it as a
// net.Conn (close-on-exec). An error means the delivery socket failed or its peer
// closed it: no more connections will come.
func ReceiveConn(c *net.UnixConn) (net.Conn, error) {
	_, f, err := RecvMsgFD(c)
	if err != nil {
		return nil, err
	}
	conn, err := FileToConn(f)
	if err != nil {
		return nil, fmt.Errorf("delivered fd: %w", err)
	}
	return conn, nil
}

// InheritedUnixConn is InheritedConn for a socket that must be a Unix socket (e.g. the
// SOCK_SEQPACKET delivery and broker sockets).
func InheritedUnixConn(env string) (*net.UnixConn, error) {
	c, err := InheritedConn(env)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s: the inherited fd is not a Unix socket", env)
	}
	return uc, nil
}
