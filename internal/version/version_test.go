package version

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStringNamesTheBuild(t *testing.T) {
	old := Version
	defer func() { Version = old }()
	Version = "v1.2.3-4-gabcdef"
	require.True(t, strings.HasPrefix(String(), "v1.2.3-4-gabcdef ("), String())
	Version = ""
	require.True(t, strings.HasPrefix(String(), "devel (") || strings.HasPrefix(String(), "v"), String())
	require.Contains(t, String(), "go1.")
}
