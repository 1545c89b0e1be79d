// Package memlimit gives each daemon a soft heap limit (runtime/debug.SetMemoryLimit),
// so that a spike (a burst of connections, a large page of results) is returned to the
// OS by the garbage collector instead of being held at its peak.
package memlimit

import (
	"flag"
	"os"
	"runtime/debug"

	"go.uber.org/zap"
)

// Default is the soft limit of oomd, logd and execd: each idles at 10–15 MiB.
const Default = 64 << 20

// Flag registers --memory-limit on the command line (bytes; 0 = GOMEMLIMIT if set,
// else the daemon's default).
func Flag() *int64 {
	return flag.Int64("memory-limit", 0, "soft heap limit in bytes (runtime/debug.SetMemoryLimit); 0 = $GOMEMLIMIT if set, else the default")
}

// Apply sets the limit: flagBytes if > 0; else, if GOMEMLIMIT is set, the limit the
// runtime already took from it; else def. It returns the limit in force.
func Apply(flagBytes, def int64, log *zap.Logger) int64 {
	limit, source := def, "default"
	switch {
	case flagBytes > 0:
		limit, source = flagBytes, "flag"
	case os.Getenv("GOMEMLIMIT") != "":
		limit, source = debug.SetMemoryLimit(-1), "GOMEMLIMIT"
	}
	debug.SetMemoryLimit(limit)
	if log != nil {
		log.Info("memory limit", zap.Int64("bytes", limit), zap.String("source", source))
	}
	return limit
}
