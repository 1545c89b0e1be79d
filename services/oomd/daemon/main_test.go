package daemon

import (
	"testing"

	"oomd.dev/oomd/internal/testutil"
)

// TestMain fails the package if a test leaks a capnp client, except the LogdAuditor's
// known leak, which is only reported: the auditor never releases its Journal (the logd
// bootstrap client connect keeps in a.journal) when run returns, and one that was
// opened but never started has no way to close its first session (a.initial). The
// capabilities imported over those connections leak with them; capnp records an
// import's creation on the connection's receive goroutine, which cannot name its
// owner, so imported clients are exempt here as a whole. Remove the exception when
// audit.go releases both.
func TestMain(m *testing.M) {
	testutil.Main(m, testutil.LeaksReportOnly("LogdAuditor keeps its logd Journal and an unstarted first session; audit.go",
		"daemon.(*LogdAuditor).connect", "rpc.(*lockedConn).addImport"))
}
