package logx

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
)

func encode(t *testing.T, format string, withTime bool) string {
	t.Helper()
	buf, err := Encoder(format, withTime).EncodeEntry(zapcore.Entry{
		Level: zapcore.InfoLevel, Time: time.Unix(1_700_000_000, 0), LoggerName: "oomd", Message: "ready",
	}, []zapcore.Field{{Key: "seq", Type: zapcore.Uint64Type, Integer: 7}})
	require.NoError(t, err)
	return buf.String()
}

// TestEncoder: lines carry an RFC 3339 wall time unless it is turned off; json is one
// object a line with the same fields.
func TestEncoder(t *testing.T) {
	line := encode(t, "console", true)
	stamp, _, ok := strings.Cut(line, "\t")
	require.True(t, ok, line)
	_, err := time.Parse(time.RFC3339, stamp)
	assert.NoError(t, err, "console lines start with the wall time: %q", line)

	assert.Equal(t, "INFO\toomd\tready\t{\"seq\": 7}\n", encode(t, "console", false), "no time: the same on every run")

	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(encode(t, "json", true)), &obj))
	assert.Equal(t, "ready", obj["msg"])
	assert.Equal(t, float64(7), obj["seq"])
	assert.Contains(t, obj, "ts")
	var bare map[string]any
	require.NoError(t, json.Unmarshal([]byte(encode(t, "json", false)), &bare))
	assert.NotContains(t, bare, "ts")

	assert.Error(t, ApplyFormat("xml"))
}
