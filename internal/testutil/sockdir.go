package testutil

import (
	"os"
	"testing"
)

// maxSocketDir bounds SocketDir's path: a socket's path must fit in sun_path (108 bytes
// with its NUL), and this leaves the name in the directory 50 bytes or more.
const maxSocketDir = 56

// SocketDir returns a new, short directory for Unix sockets, removed at the end of t.
// t.TempDir's path holds up to 64 bytes of the test's name and can leave too little
// room; this one is TMPDIR/oomd<random>, or /tmp/oomd<random> when TMPDIR is long.
func SocketDir(t testing.TB) string {
	t.Helper()
	base := os.TempDir()
	if len(base)+len("/oomd")+10 > maxSocketDir {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "oomd")
	if err != nil {
		t.Fatalf("socket directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
