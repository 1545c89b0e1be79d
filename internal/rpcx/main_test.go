package rpcx

import (
	"os"
	"testing"
)

// TestMain runs the tests without the capnp client-leak check every other package that
// makes clients has (testutil.Run). capnp's leak reporting takes a 1 MB buffer and a
// stack walk for every client made, and the flood tests here make one per call, some
// 10^5 in all: with the check the package took 30 s instead of 2 s, and the heap that
// TestPeerThatNeverFinishesCostsNothing bounds held the finalizer backlog (once 158 MB)
// rather than what the server keeps. The clients these tests make are covered where the
// daemons use rpcx: logd's server, oomd's daemon, execd, oomctl.
func TestMain(m *testing.M) { os.Exit(m.Run()) }
