// Package logx builds the zap logger every oomd process uses: structured, on stderr,
// so stdout stays free for the exact marker lines.
package logx

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger named name writing console-encoded lines to stderr. The level is
// taken from LOG_LEVEL (debug, info, warn, error; default info). Lines carry no
// wall-clock time: ordering is by sequence numbers and ticks.
func New(name string) *zap.Logger {
	level := zapcore.InfoLevel
	if s := os.Getenv("LOG_LEVEL"); s != "" {
		_ = level.UnmarshalText([]byte(s))
	}
	enc := zap.NewDevelopmentEncoderConfig()
	enc.TimeKey = ""
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(core).Named(name)
}
