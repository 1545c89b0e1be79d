// Package logx builds the zap logger every oomd process uses: structured, on stderr,
// so stdout stays free for the exact marker lines.
package logx

import (
	"flag"
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Environment variables that shape every process's logs; execd's children inherit them,
// so one setting (or one --log-format on execd) covers the whole stack.
const (
	// LevelEnv holds the log level (debug, info, warn, error; default info).
	LevelEnv = "LOG_LEVEL"
	// FormatEnv holds the encoding: console (default) or json.
	FormatEnv = "LOG_FORMAT"
	// TimeEnv set to "0" drops the wall-clock time from every line, for output that must
	// read the same on every run (golden tests). Ordering never depends on it: decisions
	// are ordered by sequence numbers and ticks.
	TimeEnv = "LOG_TIME"
)

// FormatFlag registers --log-format on the default flag set. Call Apply after
// flag.Parse, before New.
func FormatFlag() *string {
	return flag.String("log-format", "", "log encoding on stderr: console or json (default: $"+FormatEnv+", else console); children started by execd inherit it")
}

// ApplyFormat validates a --log-format value and exports it for New and for children.
func ApplyFormat(f string) error {
	switch f {
	case "":
		return nil
	case "console", "json":
		return os.Setenv(FormatEnv, f)
	}
	return fmt.Errorf("--log-format %q: want console or json", f)
}

// New returns a logger named name writing to stderr, console- or JSON-encoded, each line
// with its wall-clock time (RFC 3339, ms) unless TimeEnv is "0".
func New(name string) *zap.Logger {
	level := zapcore.InfoLevel
	if s := os.Getenv(LevelEnv); s != "" {
		_ = level.UnmarshalText([]byte(s))
	}
	return zap.New(zapcore.NewCore(Encoder(os.Getenv(FormatEnv), os.Getenv(TimeEnv) != "0"), zapcore.Lock(os.Stderr), level)).Named(name)
}

// Encoder is the encoder New uses for format ("json", else console), with or without
// the time field.
func Encoder(format string, withTime bool) zapcore.Encoder {
	var enc zapcore.EncoderConfig
	if format == "json" {
		enc = zap.NewProductionEncoderConfig()
	} else {
		enc = zap.NewDevelopmentEncoderConfig()
	}
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("2006-01-02T15:04:05.000Z07:00")
	enc.EncodeDuration = zapcore.StringDurationEncoder
	if !withTime {
		enc.TimeKey = ""
	}
	if format == "json" {
		return zapcore.NewJSONEncoder(enc)
	}
	return zapcore.NewConsoleEncoder(enc)
}
