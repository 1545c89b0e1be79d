package page

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// examples is where the non-Go publishers live, relative to this package.
const examples = "../../../examples/memstat-page"

// foreign runs a publisher as a real child with the page's rw fd inherited as fd 3 and
// returns what it printed (the page's counter after its last write).
func foreign(t *testing.T, rw *os.File, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), EnvFD+"=3")
	cmd.ExtraFiles = []*os.File{rw}
	out, err := cmd.Output()
	var stderr string
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = string(ee.Stderr)
	}
	require.NoError(t, err, "%v: %s", argv, stderr)
	return strings.TrimSpace(string(out))
}

// buildC compiles examples/memstat-page/publish.c into the test's temp dir.
func buildC(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed: cannot build examples/memstat-page/publish.c")
	}
	bin := filepath.Join(t.TempDir(), "publish")
	out, err := exec.Command(gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", bin, filepath.Join(examples, "publish.c")).CombinedOutput()
	require.NoError(t, err, "gcc: %s", out)
	return bin
}

// TestForeignPublishers: the C and Python examples, each a real child process with the
// inherited fd, publish on a fresh page and the Reader reads exactly what they wrote.
func TestForeignPublishers(t *testing.T) {
	t.Run("c", func(t *testing.T) {
		bin := buildC(t)
		rw, ro := newPage(t)
		r, err := NewReader(ro)
		require.NoError(t, err)
		defer r.Close()
		assert.Equal(t, "1000", foreign(t, rw, bin, "123456789", "1000"))
		s, st := r.Read()
		assert.Equal(t, OK, st)
		assert.Equal(t, Sample{Bytes: 123456789, Counter: 1000, Seq: 2000}, s)
	})
	t.Run("python", func(t *testing.T) {
		py, err := exec.LookPath("python3")
		if err != nil {
			t.Skip("python3 not installed: cannot run examples/memstat-page/publish.py")
		}
		rw, ro := newPage(t)
		r, err := NewReader(ro)
		require.NoError(t, err)
		defer r.Close()
		assert.Equal(t, "100", foreign(t, rw, py, filepath.Join(examples, "publish.py"), "0x40000000", "100"))
		s, st := r.Read()
		assert.Equal(t, OK, st)
		assert.Equal(t, Sample{Bytes: 1 << 30, Counter: 100, Seq: 200}, s)
	})
}

// TestForeignPublisherSharesPage: the C publisher and a Go writer in this process
// publish on the same page at the same time. Their compare-and-swap on the sequence
// excludes each other: no increment of the counter is lost, and every OK sample is one
// of them wrote.
func TestForeignPublisherSharesPage(t *testing.T) {
	bin := buildC(t)
	rw, ro := newPage(t)
	r, err := NewReader(ro)
	require.NoError(t, err)
	defer r.Close()
	w, err := NewWriter(rw)
	require.NoError(t, err)
	defer w.Close()

	const cCount, cValue = 200000, 7
	done := make(chan string, 1)
	go func() {
		cmd := exec.Command(bin, strconv.Itoa(cValue), strconv.Itoa(cCount))
		cmd.Env = append(os.Environ(), EnvFD+"=3")
		cmd.ExtraFiles = []*os.File{rw}
		out, err := cmd.CombinedOutput()
		if err != nil {
			out = append(out, err.Error()...)
		}
		done <- strings.TrimSpace(string(out))
	}()
	var goCount uint64
	var fromC, fromGo int
	var out string
loop:
	for {
		select {
		case out = <-done:
			break loop
		default:
		}
		if w.publish(func(c uint64) uint64 { return checked(1, c) }) == nil {
			goCount++
		}
		if s, st := r.Read(); st == OK {
			switch {
			case s.Bytes == cValue:
				fromC++
			case checkedID(s) == 1:
				fromGo++
			default:
				t.Fatalf("torn sample reported OK: %+v", s)
			}
		}
	}
	_, err = strconv.ParseUint(out, 10, 64)
	require.NoError(t, err, "publish.c: %s", out)
	s, _ := r.Read()
	t.Logf("Go publishes %d, C publishes %d; OK samples from C %d, from Go %d", goCount, cCount, fromC, fromGo)
	assert.Equal(t, goCount+cCount, s.Counter, "every publish of both writers counted once")
	assert.Equal(t, 2*(goCount+cCount), s.Seq)
}
