package supervisor

import (
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/lib/memstat/page"
	"oomd.dev/oomd/services/execd-stub/manifest"
)

func testSupervisor(t *testing.T, manifestJSON string, noPages bool) *Supervisor {
	t.Helper()
	m, err := manifest.Parse([]byte(manifestJSON))
	require.NoError(t, err)
	return New(Config{Manifest: m, Log: zaptest.NewLogger(t), Env: []string{"PATH=/bin"}, NoPages: noPages})
}

const withWatchdog = `{"services": [
	{"id": "wd", "argv": ["x"], "role": "watchdog"},
	{"id": "app", "argv": ["x"]}]}`

// openFDs counts this process's open fds.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

func cloexec(t *testing.T, fd uintptr) bool {
	t.Helper()
	flags, err := unix.FcntlInt(fd, unix.F_GETFD, 0)
	require.NoError(t, err)
	return flags&unix.FD_CLOEXEC != 0
}

// TestOpenChildIO: each kind of child gets its fds in the documented order, named in its
// environment; every fd is close-on-exec in execd (only ExtraFiles' dup2 makes the
// child's copies inheritable); both sockets connect execd's end to the child's, the
// second keeping message boundaries; and closing it all leaves no fd behind.
func TestOpenChildIO(t *testing.T) {
	for _, tc := range []struct {
		name    string
		id      string
		noPages bool
		wantEnv []string // the fd variables, after the inherited environment
	}{
		{"watchdog", "wd", false, []string{rpcx.EnvSessionFD + "=3", rpcx.EnvBrokerFD + "=4"}},
		{"child", "app", false, []string{rpcx.EnvSessionFD + "=3", rpcx.EnvMemstatFD + "=4", page.EnvFD + "=5"}},
		{"child without pages", "app", true, []string{rpcx.EnvSessionFD + "=3", rpcx.EnvMemstatFD + "=4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSupervisor(t, withWatchdog, tc.noPages)
			spec := s.services[tc.id].spec
			warm, err := s.openChildIO(spec) // the first use of the net poller opens its own fds
			require.NoError(t, err)
			warm.closeChildEnds()
			warm.abort()
			before := openFDs(t)

			c, err := s.openChildIO(spec)
			require.NoError(t, err)
			env := s.childEnv(spec)
			assert.Equal(t, env, c.env[:len(env)], "the inherited environment comes first")
			assert.Equal(t, tc.wantEnv, c.env[len(env):])
			require.Len(t, c.extra, len(tc.wantEnv), "one file per fd variable, in fd order")
			assert.Equal(t, c.childEnds, c.extra[:2], "the session and second sockets' child ends are fds 3 and 4")
			if len(c.extra) > 2 {
				assert.Same(t, c.page, c.extra[2], "the page is fd 5")
			} else {
				assert.Nil(t, c.page)
			}
			for i, f := range c.extra {
				assert.True(t, cloexec(t, f.Fd()), "child fd %d is close-on-exec in execd", 3+i)
			}
			raw, err := c.second.SyscallConn()
			require.NoError(t, err)
			require.NoError(t, raw.Control(func(fd uintptr) {
				assert.True(t, cloexec(t, fd), "execd's end of the second socket is close-on-exec")
				typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
				require.NoError(t, err)
				assert.Equal(t, unix.SOCK_SEQPACKET, typ)
			}))

			_, err = c.extra[0].Write([]byte("session"))
			require.NoError(t, err)
			buf := make([]byte, 16)
			n, err := c.session.Read(buf)
			require.NoError(t, err)
			assert.Equal(t, "session", string(buf[:n]))
			_, err = c.extra[1].Write([]byte("one"))
			require.NoError(t, err)
			_, err = c.extra[1].Write([]byte("two"))
			require.NoError(t, err)
			n, err = c.second.Read(buf)
			require.NoError(t, err)
			assert.Equal(t, "one", string(buf[:n]), "one write is one message")

			c.closeChildEnds()
			c.abort()
			assert.Equal(t, before, openFDs(t), "nothing is left open")
		})
	}
}

// TestHandOver: the watchdog's second socket becomes the broker's connection, another
// child's a broker member that takes its page, and with no watchdog in the manifest it
// is closed so the child sees the end at once.
func TestHandOver(t *testing.T) {
	s := testSupervisor(t, withWatchdog, false)
	wd := &proc{svc: s.services["wd"], instance: 1}
	c, err := s.openChildIO(wd.svc.spec)
	require.NoError(t, err)
	defer c.closeChildEnds()
	s.handOver(wd, c.second)
	assert.Same(t, c.second, s.broker.conn)
	assert.Equal(t, uint64(1), s.broker.instance)
	s.broker.detach(1)

	app := &proc{svc: s.services["app"], instance: 2}
	c, err = s.openChildIO(app.svc.spec)
	require.NoError(t, err)
	defer c.closeChildEnds()
	app.page = c.page
	s.handOver(app, c.second)
	require.Len(t, s.broker.members, 1)
	m := s.broker.members[0]
	assert.Equal(t, "app", m.subject)
	assert.Equal(t, uint64(2), m.instance)
	assert.Same(t, c.second, m.delivery)
	assert.Same(t, c.page, m.page)
	assert.Nil(t, app.page, "the broker owns the page now")
	s.broker.forget(app)
	c.page.Close()

	alone := testSupervisor(t, `{"services": [{"id": "app", "argv": ["x"]}]}`, false)
	p := &proc{svc: alone.services["app"], instance: 1}
	c, err = alone.openChildIO(p.svc.spec)
	require.NoError(t, err)
	defer c.closeChildEnds()
	defer c.page.Close()
	alone.handOver(p, c.second)
	n, err := c.extra[1].Read(make([]byte, 8))
	assert.Zero(t, n)
	assert.ErrorIs(t, err, io.EOF, "the child's end reads the end at once")
	assert.Empty(t, alone.broker.members)
}

// TestCommand: the child runs in its own process group, dies with execd, gets the
// environment and fds of its childIO, and its pidfd slot says "none" until the fork.
func TestCommand(t *testing.T) {
	s := testSupervisor(t, withWatchdog, false)
	spec := s.services["app"].spec
	c, err := s.openChildIO(spec)
	require.NoError(t, err)
	defer c.abort()
	defer c.closeChildEnds()
	cmd := s.command(spec, c, nil)
	assert.Equal(t, spec.Argv, cmd.Args)
	assert.Equal(t, c.env, cmd.Env)
	assert.Equal(t, c.extra, cmd.ExtraFiles)
	attr := cmd.SysProcAttr
	assert.True(t, attr.Setpgid)
	assert.Equal(t, syscall.SIGKILL, attr.Pdeathsig)
	require.NotNil(t, attr.PidFD)
	assert.Equal(t, -1, *attr.PidFD)
	assert.Contains(t, cmd.Env, rpcx.EnvSubject+"=app")
}
