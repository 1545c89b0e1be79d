package daemon

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"oomd.dev/oomd/services/oomd/policy"
)

// The decision lines, exactly: what a person reads in the log for each decision.
func TestWhy(t *testing.T) {
	for _, tc := range []struct {
		e    policy.Event
		want string
	}{
		{policy.Event{Kind: policy.EventSoftExceeded, Subject: "hog", Bytes: 29 << 20, Limit: 24 << 20},
			"hog above its soft limit: 29 MiB > 24 MiB"},
		{policy.Event{Kind: policy.EventKillDecided, Subject: "hog", Bytes: 44 << 20, Limit: 40 << 20, Decision: 7, Reason: "signal=kernel"},
			"kill decided for hog: 44 MiB > hard 40 MiB (signal=kernel); decision 7, waiting for its audit record"},
		{policy.Event{Kind: policy.EventKillThrottled, Subject: "hog", Decision: 8, Reason: "budget=2 window=50"},
			"kill of hog throttled: decision 8 waits for the kill budget (budget=2 window=50)"},
		{policy.Event{Kind: policy.EventKillRequested, Subject: "hog", Decision: 7},
			"asking execd to end hog: decision 7 is durable in the audit journal"},
		{policy.Event{Kind: policy.EventKilled, Subject: "hog", Bytes: 44<<20 + 512<<10, Limit: 40 << 20, Decision: 7, Reason: "exit=0"},
			"killed hog: 44.5 MiB > hard 40 MiB; decision 7, its last process gone (exit=0)"},
		{policy.Event{Kind: policy.EventKillDenied, Subject: "policyd", Bytes: 46 << 20, Limit: 40 << 20, Reason: "critical"},
			"kill denied for policyd: 46 MiB > hard 40 MiB, but it is critical"},
		{policy.Event{Kind: policy.EventMemstatUnderReported, Subject: "liar", Bytes: 70 << 20, Limit: 7 << 20},
			"liar under-reports: the kernel counts 70 MiB, it publishes 7 MiB"},
		{policy.Event{Kind: policy.EventWouldKill, Subject: "hog", Bytes: 44 << 20, Limit: 40 << 20, Reason: "dry run: hard limit exceeded"},
			"dry run: would kill hog: 44 MiB > hard 40 MiB (dry run: hard limit exceeded); nothing sent"},
		{policy.Event{Kind: policy.EventWouldKill, Subject: "hog", Bytes: 44 << 20, Limit: 40 << 20, Decision: 3, Reason: "dry run began before its terminate request"},
			"dry run: decision 3 for hog ended unsent (44 MiB > hard 40 MiB) (dry run began before its terminate request)"},
		{policy.Event{Kind: policy.EventSubjectRegistered, Subject: "hog"}, "subjectRegistered"},
	} {
		assert.Equal(t, tc.want, why(tc.e))
	}
}
