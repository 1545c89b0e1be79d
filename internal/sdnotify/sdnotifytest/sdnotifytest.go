// Package sdnotifytest is a fake systemd notify socket for tests: a unixgram socket in a
// temporary directory that records every datagram with the sender's pid (SO_PASSCRED,
// as systemd itself learns it).
package sdnotifytest

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"oomd.dev/oomd/internal/sdnotify/credgram"
	"oomd.dev/oomd/internal/testutil"
)

// Message is one datagram received.
type Message struct {
	State string // e.g. "READY=1"
	Pid   int    // the sender's pid, from its credentials
}

// Socket is a listening fake NOTIFY_SOCKET.
type Socket struct {
	Path string
	msgs chan Message
}

// Listen makes the socket in a fresh temporary directory; it is closed at the end of t.
func Listen(t testing.TB) *Socket {
	t.Helper()
	return ListenAt(t, filepath.Join(testutil.SocketDir(t), "notify"))
}

// ListenAt is Listen at path (a test that names the socket before it exists).
func ListenAt(t testing.TB, path string) *Socket {
	t.Helper()
	s := &Socket{Path: path, msgs: make(chan Message, 1024)}
	c, err := credgram.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		defer close(s.msgs)
		rd := credgram.NewReader(4096)
		for {
			b, pid, err := rd.Read(c)
			if err != nil {
				return
			}
			m := Message{State: strings.TrimSpace(string(b)), Pid: pid}
			select {
			case s.msgs <- m:
			default: // a test that stopped reading; never block the sender
			}
		}
	}()
	return s
}

// ErrTimeout is returned by Wait when no matching message came within its bound.
var ErrTimeout = errors.New("no such notify message in time")

// Wait returns the next message whose state is state, skipping others, or ErrTimeout
// after within. The bound is a failure bound, not a timing assertion.
func (s *Socket) Wait(state string, within time.Duration) (Message, []Message, error) {
	var skipped []Message
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				return Message{}, skipped, errors.New("notify socket closed")
			}
			if m.State == state {
				return m, skipped, nil
			}
			skipped = append(skipped, m)
		case <-timer.C:
			return Message{}, skipped, ErrTimeout
		}
	}
}

// Received returns the messages read so far and not yet returned by Wait, without
// waiting for more.
func (s *Socket) Received() []Message {
	var got []Message
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				return got
			}
			got = append(got, m)
		default:
			return got
		}
	}
}
