package testutil

import (
	"fmt"
	"testing"
	"time"
)

// Eventually calls observe until it reports done and returns what it observed then.
// The deadline is a failure bound, not a timing assertion: if observe has not reported
// done within it, t fails with msgAndArgs (a message, or a format and its arguments)
// and the last value observe returned, so the failure says how far things got.
//
// Unlike require.Eventually, observe runs on the calling goroutine, one call at a time:
// it may use require (t.FailNow), and a slow observation delays the next one instead of
// overlapping it. It polls with a backoff from 1 ms to 20 ms: use it for state only
// visible by looking (a file, /proc, a counter); wait on a channel when there is one.
func Eventually[T any](t testing.TB, deadline time.Duration, observe func() (T, bool), msgAndArgs ...any) T {
	t.Helper()
	end := time.Now().Add(deadline)
	wait := time.Millisecond
	for {
		v, done := observe()
		if done {
			return v
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s; last observed: %+v", deadline, message(msgAndArgs), v)
			return v
		}
		time.Sleep(wait) // polling an observation, not synchronising with it
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// message renders testify-style msgAndArgs.
func message(msgAndArgs []any) string {
	switch len(msgAndArgs) {
	case 0:
		return "the condition"
	case 1:
		if s, ok := msgAndArgs[0].(string); ok {
			return s
		}
		return fmt.Sprintf("%+v", msgAndArgs[0])
	default:
		if f, ok := msgAndArgs[0].(string); ok {
			return fmt.Sprintf(f, msgAndArgs[1:]...)
		}
		return fmt.Sprint(msgAndArgs...)
	}
}
