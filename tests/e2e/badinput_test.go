package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

func TestMalformedManifestIsRejectedWithPosition(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"unknown field": {`{"services": [{"id": "a", "argv": ["x"], "bogus": 1}]}`, "bogus"},
		"syntax":        {"{\"services\": [\n  {\"id\": }]}", "2:"},
		"cycle": {`{"services": [{"id": "a", "argv": ["x"], "dependsOn": ["b"]},
			{"id": "b", "argv": ["x"], "dependsOn": ["a"]}]}`, "cycle"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			m := filepath.Join(dir, "m.json")
			require.NoError(t, os.WriteFile(m, []byte(tc.body), 0o600))
			cmd := exec.Command(filepath.Join(binDir, "execd-stub"), "--manifest", m, "--runtime-dir", filepath.Join(dir, "rt"))
			out, err := cmd.CombinedOutput()
			checkNoRace(t, "execd", string(out))
			require.Error(t, err, "execd accepted a bad manifest:\n%s", out)
			assert.Contains(t, string(out), tc.want)
		})
	}
}

// TestControlRejectsBadInputWithoutChangingState covers an invalid policy, an inject
// for an unknown subject, and an oversized frame: each gets a clear error (or a closed
// connection) and oomd's state and other clients are untouched.
func TestControlRejectsBadInputWithoutChangingState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startStack(t, manifest(fmt.Sprintf(hogEntry, "", 1000)), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	before, beforeVer := getPolicy(t, ctx, c)

	bad := before
	bad.HardBytes = bad.SoftBytes - 1
	_, err := c.SetPolicy(ctx, bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "hardBytes")
	bad = before
	bad.SampleMs = 1
	_, err = c.SetPolicy(ctx, bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "sampleMs")
	after, afterVer := getPolicy(t, ctx, c)
	assert.Equal(t, before, after, "a rejected policy must leave the old one in force")
	assert.Equal(t, beforeVer, afterVer)

	// A compare-and-set against a version no longer in force changes nothing.
	changed := before
	changed.KillBudget = before.KillBudget + 1
	_, err = c.SetPolicyIf(ctx, changed, beforeVer+7)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "policy changed")
	after, afterVer = getPolicy(t, ctx, c)
	assert.Equal(t, before, after)
	assert.Equal(t, beforeVer, afterVer)
	v, err := c.SetPolicyIf(ctx, changed, beforeVer)
	require.NoError(t, err, "the version in force is accepted")
	assert.Equal(t, beforeVer+1, v)
	before, beforeVer = changed, v

	err = c.Inject(ctx, "no-such-app", 1<<20)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unknown subject")

	// An oversized frame closes that connection only.
	raw, err := net.Dial("unix", s.path("oomd.sock"))
	require.NoError(t, err)
	defer raw.Close()
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[4:], 1<<24) // one segment of 128 MiB
	_, err = raw.Write(hdr[:])
	require.NoError(t, err)
	require.NoError(t, raw.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = io.Copy(io.Discard, raw)
	require.NoError(t, err, "oomd must close the oversized connection")

	// Malformed bytes close that connection only, too.
	garbage, err := net.Dial("unix", s.path("oomd.sock"))
	require.NoError(t, err)
	defer garbage.Close()
	_, err = garbage.Write([]byte{0, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0})
	require.NoError(t, err)
	require.NoError(t, garbage.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = io.Copy(io.Discard, garbage)
	require.NoError(t, err, "oomd must close the malformed connection")

	_, ver := getPolicy(t, ctx, c)
	assert.Equal(t, beforeVer, ver, "the first client still works and nothing changed")
}

// TestInjectIsRefusedUnlessEnabled is security invariant 7.
func TestInjectIsRefusedUnlessEnabled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := `{"services": [
  {"id": "logd", "argv": ["${BIN}/logd-stub", "--socket", "${RUNTIME_DIR}/logd.sock", "--dir", "${RUNTIME_DIR}/journal"], "critical": true},
  {"id": "oomd", "argv": ["${BIN}/oomd", "--socket", "${RUNTIME_DIR}/oomd.sock", "--logd", "${RUNTIME_DIR}/logd.sock"],
   "role": "watchdog", "critical": true, "dependsOn": ["logd"]}` + fmt.Sprintf(hogEntry, "", 1000) + `]}`
	s := startStack(t, m, nil)
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)
	err = c.Inject(ctx, "hog", 1<<20)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--enable-inject")
	// What the hog publishes (its page) would carry an inject that reached it within a
	// tick; give it five. Not its enforced bytes: those follow the kernel's count of the
	// hog's own runtime once a tick has read it.
	start := statusNow(t, ctx, c).tick
	for statusNow(t, ctx, c).tick < start+5 {
		require.NoError(t, ctx.Err(), "oomd stopped ticking")
	}
	assert.Equal(t, uint64(0), subjectStatus(t, ctx, c, "hog").CooperativeBytes(), "a refused inject must not reach the hog")
}

func getPolicy(t *testing.T, ctx context.Context, c *ctlclient.Client) (policy.Policy, uint64) {
	t.Helper()
	p, v, err := c.GetPolicy(ctx)
	require.NoError(t, err)
	return p, v
}
