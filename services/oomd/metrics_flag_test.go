package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// A bad --metrics address fails start, before execd's session is opened, with an
// error that names the flag.
func TestBadMetricsAddressFailsStart(t *testing.T) {
	o := options{socket: "unused.sock", logd: "unused.sock", metrics: "127.0.0.1:notaport"}
	err := run(context.Background(), o, zaptest.NewLogger(t))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--metrics")
	assert.Contains(t, err.Error(), "127.0.0.1:notaport")
}
