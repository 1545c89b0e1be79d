// Package credgram is a Unix datagram socket that learns each sender's pid from the
// kernel (SO_PASSCRED, SCM_CREDENTIALS), as systemd's notify socket does. execd's
// notify relay listens on one, and so does the fake systemd of the tests
// (sdnotifytest), so both read senders the same way.
package credgram

import (
	"net"

	"golang.org/x/sys/unix"
)

// Listen binds a datagram socket at path with SO_PASSCRED on.
func Listen(path string) (*net.UnixConn, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err == nil {
		var serr error
		if err = raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err == nil {
			err = serr
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Reader reads datagrams with their sender's pid; one per goroutine.
type Reader struct {
	buf, oob []byte
}

// NewReader reads datagrams of up to size bytes (longer ones are cut).
func NewReader(size int) *Reader {
	return &Reader{buf: make([]byte, size), oob: make([]byte, unix.CmsgSpace(unix.SizeofUcred))}
}

// Read returns the next datagram on c (valid until the next Read) and the pid the
// kernel attached to it (0 if none came).
func (r *Reader) Read(c *net.UnixConn) (msg []byte, pid int, err error) {
	n, oobn, _, _, err := c.ReadMsgUnix(r.buf, r.oob)
	if err != nil {
		return nil, 0, err
	}
	if cmsgs, err := unix.ParseSocketControlMessage(r.oob[:oobn]); err == nil {
		for _, cm := range cmsgs {
			if cred, err := unix.ParseUnixCredentials(&cm); err == nil {
				pid = int(cred.Pid)
			}
		}
	}
	return r.buf[:n], pid, nil
}
