package daemon

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The subject bound follows the fd limit: two fds a subject after a reserve, never above
// MaxSubjects.
func TestMaxSubjectsFollowsTheFdLimit(t *testing.T) {
	var orig unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &orig))
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &orig)

	low := unix.Rlimit{Cur: 2*fdReserve + 1000, Max: orig.Max}
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))
	require.Equal(t, int((low.Cur-fdReserve)/2), maxSubjects())

	if orig.Max >= 2*MaxSubjects+fdReserve {
		high := unix.Rlimit{Cur: orig.Max, Max: orig.Max}
		require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &high))
		require.Equal(t, MaxSubjects, maxSubjects())
	}
}
