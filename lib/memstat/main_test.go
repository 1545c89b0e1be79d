package memstat

import (
	"testing"

	"oomd.dev/oomd/internal/testutil"
)

// TestMain fails the package if a test leaks a capnp client.
func TestMain(m *testing.M) { testutil.Main(m) }
