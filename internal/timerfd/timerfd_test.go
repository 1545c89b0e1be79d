package timerfd

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deadline bounds each wait; it is a failure bound, not a timing assertion.
const deadline = 10 * time.Second

func waitTick(t *testing.T, tk *Ticker) time.Time {
	t.Helper()
	select {
	case at := <-tk.C:
		return at
	case <-time.After(deadline):
		t.Fatal("no tick")
	}
	return time.Time{}
}

func TestTickerTicksAndResets(t *testing.T) {
	tk, err := NewTicker(5 * time.Millisecond)
	require.NoError(t, err)
	defer tk.Stop()
	prev := waitTick(t, tk)
	for range 3 {
		at := waitTick(t, tk)
		assert.True(t, at.After(prev), "ticks come in order")
		prev = at
	}
	require.NoError(t, tk.Reset(time.Millisecond))
	for range 3 {
		waitTick(t, tk)
	}
	assert.Error(t, tk.Reset(0))
}

func TestTickerStopEndsItsGoroutine(t *testing.T) {
	tk, err := NewTicker(time.Millisecond)
	require.NoError(t, err)
	waitTick(t, tk)
	tk.Stop() // returns only once run has ended
	select {
	case <-tk.done:
	default:
		t.Fatal("the reader goroutine outlived Stop")
	}
	// What was buffered may still be read; nothing is sent after Stop.
	select {
	case <-tk.C:
	default:
	}
	select {
	case <-tk.C:
		t.Fatal("a tick after Stop")
	default:
	}
}

func TestNewTickerRefusesNonPositive(t *testing.T) {
	_, err := NewTicker(0)
	assert.Error(t, err)
}
