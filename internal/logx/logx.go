// Package logx builds the zap logger every oomd process uses: structured, on stderr,
// so stdout stays free for the exact marker lines.
package logx

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// LevelEnv names the environment variable holding the log level (debug, info, warn,
// error; default info). execd's children inherit it.
const LevelEnv = "LOG_LEVEL"

// New returns a logger named name writing console-encoded lines to stderr. Lines carry
// no wall-clock time: a stack's console reads the same on every run, and ordering is by
// sequence numbers and ticks.
func New(name string) *zap.Logger {
	level := zapcore.InfoLevel
	if s := os.Getenv(LevelEnv); s != "" {
		_ = level.UnmarshalText([]byte(s))
	}
	enc := zap.NewDevelopmentEncoderConfig()
	enc.TimeKey = ""
	enc.EncodeDuration = zapcore.StringDurationEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(core).Named(name)
}
