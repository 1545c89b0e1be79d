package page

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The test binary doubles as a second process (a subject holding the page's rw fd as fd
// 3): TestMain runs the helper named by envHelper instead of the tests.
const (
	envHelper   = "PAGE_TEST_HELPER"
	envWriterID = "PAGE_TEST_WRITER_ID"
)

// deadline bounds every wait on another process.
const deadline = 20 * time.Second

func TestMain(m *testing.M) {
	if mode := os.Getenv(envHelper); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// checked is the value writer id publishes with counter c: a reader can tell a value
// some writer wrote in one cycle (checkedID finds a known id) from a torn mix of two.
func checked(id, c uint64) uint64 { return c*0x9E3779B97F4A7C15 ^ id }

func checkedID(s Sample) uint64 { return s.Bytes ^ s.Counter*0x9E3779B97F4A7C15 }

// runHelper is the child's side. It reports progress as lines on stdout and treats EOF
// on stdin as the parent's "stop".
func runHelper(mode string) int {
	f := os.NewFile(3, "page")
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "helper:", err); return 2 }
	switch mode {
	case "publish": // publish checked values at full speed until stdin closes
		w, err := NewWriter(f)
		if err != nil {
			return fail(err)
		}
		id, _ := strconv.ParseUint(os.Getenv(envWriterID), 10, 64)
		stop := make(chan struct{})
		go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()
		n := 0
		for {
			select {
			case <-stop:
				fmt.Fprintln(os.Stderr, "published", n)
				return 0
			default:
			}
			for i := 0; i < 256; i++ {
				if w.publish(func(c uint64) uint64 { return checked(id, c) }) == nil {
					n++
				}
			}
			if n > 0 && n <= 256 {
				fmt.Println("publishing")
			}
		}
	case "stall": // start a write cycle, never finish it; exit mid-write when stdin closes
		w, err := NewWriter(f)
		if err != nil {
			return fail(err)
		}
		seq, ok := w.acquire()
		if !ok {
			return fail(ErrBusy)
		}
		w.h.bytes = 1 << 40 // half a write: no counter, no even sequence
		fmt.Println("held", seq)
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0) // mid-write, on purpose
	case "unmap": // start a write cycle, unmap the page, then exit
		w, err := NewWriter(f)
		if err != nil {
			return fail(err)
		}
		if _, ok := w.acquire(); !ok {
			return fail(ErrBusy)
		}
		if err := unix.Munmap(w.mem); err != nil {
			return fail(err)
		}
		fmt.Println("unmapped")
		return 0
	case "resize": // try to change the page's size and seals; print each errno
		try := func(name string, err error) { fmt.Printf("%s=%v\n", name, errnoName(err)) }
		try("truncate0", unix.Ftruncate(3, 0))
		try("truncate1", unix.Ftruncate(3, 1))
		try("grow", unix.Ftruncate(3, 2*PageSize))
		_, err := unix.Pwrite(3, []byte{1}, PageSize)
		try("writepast", err)
		try("punchhole", unix.Fallocate(3, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, PageSize, PageSize))
		_, err = unix.FcntlInt(3, unix.F_ADD_SEALS, unix.F_SEAL_WRITE)
		try("addseal", err)
		return 0
	}
	return fail(fmt.Errorf("unknown helper mode %q", mode))
}

func errnoName(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(unix.Errno); ok {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

// child is a helper process holding the page as fd 3.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan error
}

// startChild runs the helper mode with f as its fd 3 and env added.
func startChild(t *testing.T, mode string, f *os.File, env ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{envHelper + "=" + mode, EnvFD + "=3"}, env...)...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 64), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody listens any more
			}
		}
		close(c.lines)
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-c.done:
		case <-time.After(deadline):
			cmd.Process.Kill()
		}
	})
	return c
}

// expect waits for the child's next line and requires it to start with prefix.
func (c *child) expect(prefix string) string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		require.True(c.t, ok, "helper exited before printing %q", prefix)
		require.True(c.t, strings.HasPrefix(l, prefix), "helper printed %q, want %q...", l, prefix)
		return l
	case <-time.After(deadline):
		c.t.Fatalf("helper did not print %q within %v", prefix, deadline)
		return ""
	}
}

// wait closes the child's stdin (its "stop") and waits for it to exit.
func (c *child) wait() error {
	c.t.Helper()
	c.stdin.Close()
	for range c.lines {
	}
	select {
	case err := <-c.done:
		c.done <- err // for the cleanup
		return err
	case <-time.After(deadline):
		c.t.Fatalf("helper did not exit within %v", deadline)
		return nil
	}
}

// newPage creates a page and returns it with a read-only reopening, both closed at the
// end of the test.
func newPage(t *testing.T) (rw, ro *os.File) {
	t.Helper()
	rw, err := Create("page-test")
	require.NoError(t, err)
	t.Cleanup(func() { rw.Close() })
	ro, err = ReadOnly(rw)
	require.NoError(t, err)
	t.Cleanup(func() { ro.Close() })
	return rw, ro
}

// scribbler maps the page read-write without the Writer, as a hostile subject would.
func scribbler(t *testing.T, rw *os.File) []byte {
	t.Helper()
	mem, err := unix.Mmap(int(rw.Fd()), 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}
