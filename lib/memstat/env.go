package memstat

import (
	"os"

	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/lib/memstat/page"
)

// Environment variables a process started by execd inherits (the others, such as
// OOMD_MEMSTAT_FD and OOMD_SUBJECT, are in internal/rpcx).
const (
	// EnvPageFD names the inherited read-write fd of the process's memstat page (a
	// sealed one-page memfd, docs/memstat-page.md). When it is set, Connect publishes
	// every Set to the page with a plain store instead of over RPC.
	EnvPageFD = page.EnvFD
)

func subjectFromEnv() string { return os.Getenv(rpcx.EnvSubject) }
