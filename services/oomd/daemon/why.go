package daemon

import (
	"fmt"

	"oomd.dev/oomd/services/oomd/policy"
)

// why is the one log line a person reads for a decision: what happened to whom, the
// reading against the limit, and why, in human units. Events that are not decisions get
// their kind name (their fields say the rest). The marker lines on stdout are separate
// and unchanged.
func why(e policy.Event) string {
	b, l := policy.HumanBytes(e.Bytes), policy.HumanBytes(e.Limit)
	because := ""
	if e.Reason != "" {
		because = " (" + e.Reason + ")"
	}
	switch e.Kind {
	case policy.EventSoftExceeded:
		return fmt.Sprintf("%s above its soft limit: %s > %s", e.Subject, b, l)
	case policy.EventSoftCleared:
		return fmt.Sprintf("%s back under its soft limit: %s <= %s", e.Subject, b, l)
	case policy.EventKillDecided:
		return fmt.Sprintf("kill decided for %s: %s > hard %s%s; decision %d, waiting for its audit record", e.Subject, b, l, because, e.Decision)
	case policy.EventKillThrottled:
		return fmt.Sprintf("kill of %s throttled: decision %d waits for the kill budget%s", e.Subject, e.Decision, because)
	case policy.EventKillRequested:
		return fmt.Sprintf("asking execd to end %s: decision %d is durable in the audit journal", e.Subject, e.Decision)
	case policy.EventKilled:
		return fmt.Sprintf("killed %s: %s > hard %s; decision %d, its last process gone%s", e.Subject, b, l, e.Decision, because)
	case policy.EventKillDenied:
		return fmt.Sprintf("kill denied for %s: %s > hard %s, but it is %s", e.Subject, b, l, e.Reason)
	case policy.EventKillRefused:
		return fmt.Sprintf("execd refused to kill %s: decision %d%s", e.Subject, e.Decision, because)
	case policy.EventMemstatUnderReported:
		return fmt.Sprintf("%s under-reports: the kernel counts %s, it publishes %s", e.Subject, b, l)
	case policy.EventWouldKill:
		if e.Decision != 0 {
			return fmt.Sprintf("dry run: decision %d for %s ended unsent (%s > hard %s)%s", e.Decision, e.Subject, b, l, because)
		}
		return fmt.Sprintf("dry run: would kill %s: %s > hard %s%s; nothing sent", e.Subject, b, l, because)
	case policy.EventVictimWouldKill:
		return fmt.Sprintf("dry run: under pressure oomd would kill %s (%s against hard %s)%s", e.Subject, b, l, because)
	}
	return e.Kind.String()
}
