package procstat

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A command name with spaces and parentheses does not shift the fields after it.
func TestParseCountsFromTheLastParenthesis(t *testing.T) {
	line := "4242 (evil) 1 2 3 (x) S 17 4242 4242 0 -1 4194304 1 0 0 0 7 9 0 0 20 0 1 0 123456 0\n"
	s, err := Parse([]byte(line))
	require.NoError(t, err)
	assert.Equal(t, "S", string(s.Field(FieldState)))
	ppid, err := s.Uint(FieldPPID)
	require.NoError(t, err)
	assert.Equal(t, uint64(17), ppid)
	assert.Equal(t, "4242", string(s.Field(FieldPGRP)))
	ut, _ := s.Uint(FieldUTime)
	st, _ := s.Uint(FieldSTime)
	assert.Equal(t, [2]uint64{7, 9}, [2]uint64{ut, st})
	start, err := s.Uint(FieldStartTime)
	require.NoError(t, err)
	assert.Equal(t, uint64(123456), start)
	assert.False(t, s.Gone())
	assert.Nil(t, s.Field(2), "the command name is not a field here")
	assert.Nil(t, s.Field(99))
	_, err = s.Uint(99)
	assert.ErrorContains(t, err, "no field 99")
}

func TestParseRefusesWhatIsNotAStatLine(t *testing.T) {
	for _, b := range []string{"", "4242 no parenthesis", "4242 (name)"} {
		_, err := Parse([]byte(b))
		assert.Error(t, err, "%q", b)
	}
	s, err := Parse([]byte("1 (a) Z"))
	require.NoError(t, err)
	assert.True(t, s.Gone(), "a zombie")
	_, err = s.Uint(FieldPPID)
	assert.ErrorContains(t, err, "field 4")
}

// The real file of this process.
func TestReadSelf(t *testing.T) {
	s, err := Read(os.Getpid())
	require.NoError(t, err)
	ppid, err := s.Uint(FieldPPID)
	require.NoError(t, err)
	assert.Equal(t, uint64(os.Getppid()), ppid)
	start, err := s.Uint(FieldStartTime)
	require.NoError(t, err)
	assert.Positive(t, start)
	_, err = Read(1 << 30)
	assert.Error(t, err, "no such process")
}
