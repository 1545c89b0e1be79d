// Package packaging holds the oomwatch .deb's files (nfpm.yaml, the systemd unit, the
// default manifest and policy) and checks here that they agree with each other and
// with what the daemons accept. The install test proper is deb-test.sh (make deb-test).
package packaging

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/execd-stub/manifest"
	"oomd.dev/oomd/services/oomd/policyfile"
)

// shipped lists the dst paths of nfpm.yaml.
func shipped(t *testing.T) []string {
	b, err := os.ReadFile("nfpm.yaml")
	require.NoError(t, err)
	var dst []string
	for _, m := range regexp.MustCompile(`(?m)^\s+dst: (\S+)$`).FindAllStringSubmatch(string(b), -1) {
		dst = append(dst, m[1])
	}
	require.NotEmpty(t, dst)
	return dst
}

func TestDefaultManifestAndPolicyAreValid(t *testing.T) {
	m, err := manifest.Load("manifest.json")
	require.NoError(t, err, "the packaged manifest")
	files := shipped(t)
	var watchdog bool
	for _, s := range m.Services {
		assert.Contains(t, files, s.Argv[0], "service %s runs a program the package ships", s.ID)
		watchdog = watchdog || s.Watchdog()
		for _, a := range s.Argv {
			if strings.HasPrefix(a, "/") && !strings.HasPrefix(a, "/usr/libexec/oomwatch/") {
				assert.True(t, strings.HasPrefix(a, "/var/lib/oomwatch/"), "%s: %s: state belongs in the unit's StateDirectory", s.ID, a)
			}
		}
	}
	assert.True(t, watchdog, "the manifest has a watchdog")
	_, err = policyfile.Load("policy.json")
	require.NoError(t, err, "the packaged policy")
}

func TestUnitMatchesThePackage(t *testing.T) {
	b, err := os.ReadFile("systemd/oomwatch.service")
	require.NoError(t, err)
	unit := string(b)
	files := shipped(t)
	assert.Contains(t, files, "/usr/lib/systemd/system/oomwatch.service")
	start := regexp.MustCompile(`(?m)^ExecStart=(\S+) (.*)$`).FindStringSubmatch(unit)
	require.NotNil(t, start, "ExecStart")
	assert.Contains(t, files, start[1], "ExecStart runs a shipped binary")
	assert.Contains(t, start[2], "--manifest /etc/oomwatch/manifest.json")
	assert.Contains(t, start[2], "--runtime-dir /run/oomwatch", "the CLI's packaged default socket is /run/oomwatch/oomd.sock")
	for _, line := range []string{"Type=notify", "NotifyAccess=main", "Delegate=yes", "KillMode=mixed",
		"RuntimeDirectory=oomwatch", "StateDirectory=oomwatch", "ExecReload=/bin/kill -HUP $MAINPID"} {
		assert.Contains(t, strings.Split(unit, "\n"), line)
	}
	for _, f := range []string{"/etc/oomwatch/manifest.json", "/etc/oomwatch/policy.json"} {
		assert.True(t, slices.Contains(files, f), "%s is shipped", f)
	}
}
