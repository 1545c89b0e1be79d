package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClosest(t *testing.T) {
	cands := []string{"status", "policy", "events", "audit", "last-reboot", "help"}
	for got, want := range map[string]string{
		"stauts": "status", "statu": "status", "polcy": "policy", "event": "events", "audti": "audit",
		"last": "last-reboot", "zzz": "", "status": "", "": "", "e": "events", "hlep": "help", "xyzzy-reboot": "",
	} {
		assert.Equal(t, want, closest(got, cands), "closest(%q)", got)
	}
	assert.Equal(t, 3, editDistance("kitten", "sitting"))
	assert.Equal(t, 1, editDistance("ab", "ba"), "a swap of neighbours is one edit")
}

func TestTypoSuggestions(t *testing.T) {
	code, _, stderr := oomctl(t, nil, "stauts")
	assert.Equal(t, ExitUsage, code)
	assert.Equal(t, "oomctl: unknown command \"stauts\" (did you mean \"status\"?) (see oomctl help)\n", stderr)
	code, _, stderr = oomctl(t, nil, "policy", "st")
	assert.Equal(t, ExitUsage, code)
	assert.Contains(t, stderr, `policy st: unknown command: say get or set (did you mean "set"?)`)
	code, _, stderr = oomctl(t, nil, "policy", "set", "--hard-byte", "5M")
	assert.Equal(t, ExitUsage, code)
	assert.Contains(t, stderr, "oomctl: --hard-byte: did you mean --hard-bytes?\n")
	code, _, stderr = oomctl(t, nil, "events", "--folow")
	assert.Equal(t, ExitUsage, code)
	assert.Contains(t, stderr, "did you mean --follow?")
}

// TestBashCompletion sources the generated script in a real bash and completes a few
// command lines with it.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash here")
	}
	code, script, stderr := oomctl(t, nil, "completion", "bash")
	require.Equal(t, ExitOK, code, stderr)
	path := filepath.Join(t.TempDir(), "oomctl.bash")
	require.NoError(t, os.WriteFile(path, []byte(script), 0o600))
	complete := func(words ...string) []string {
		t.Helper()
		// COMP_WORDS as bash fills it: the command line split into words, the cursor on the last.
		line := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _oomd_ctl; printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command(bash, append([]string{"-c", line, "bash", path}, words...)...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return strings.Fields(string(out))
	}
	assert.Equal(t, []string{"policy"}, complete("oomctl", "pol"))
	assert.Equal(t, []string{"get", "set"}, complete("oomctl", "policy", ""))
	assert.Equal(t, []string{"--hard-bytes"}, complete("oomctl", "policy", "set", "--hard"))
	assert.Equal(t, []string{"--follow"}, complete("oomctl", "--json", "events", "--fo"))
	assert.Contains(t, complete("oomctl", ""), "completion")

	code, _, stderr = oomctl(t, nil, "completion", "fish")
	assert.Equal(t, ExitUsage, code)
	assert.Contains(t, stderr, "completion: say bash")
}

// The completion registers for the name the CLI was run as (the .deb installs it as
// oomwatchctl), so that bash completes that command; a name that is not a plain word
// falls back to oomctl.
func TestBashCompletionRegistersForItsName(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash here")
	}
	for name, want := range map[string]string{"oomwatchctl": "oomwatchctl", "": "oomctl", "x; rm -rf /": "oomctl", "-r": "oomctl"} {
		var out, errb bytes.Buffer
		code := Main(context.Background(), []string{"completion", "bash"}, Env{Stdout: &out, Stderr: &errb, Name: name})
		require.Equal(t, ExitOK, code, errb.String())
		path := filepath.Join(t.TempDir(), "c.bash")
		require.NoError(t, os.WriteFile(path, out.Bytes(), 0o600))
		reg, err := exec.Command(bash, "-c", `source "$1"; complete -p "$2"`, "bash", path, want).CombinedOutput()
		require.NoError(t, err, "name %q: %s", name, reg)
		assert.Equal(t, "complete -o default -F _oomd_ctl "+want, strings.TrimSpace(string(reg)), "name %q", name)
	}
}

// TestHelpSaysTheNameItWasRunAs: run as oomwatchctl (the .deb's name), the help, a
// command's help, the version and the errors name oomwatchctl, so what they show can be
// typed as it is; run under no usable name they say oomctl.
func TestHelpSaysTheNameItWasRunAs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"help"}, ExitOK},
		{[]string{"help", "policy", "set"}, ExitOK},
		{[]string{"--version"}, ExitOK},
		{[]string{"stauts"}, ExitUsage},
		{[]string{"policy", "set"}, ExitUsage},
		{[]string{"replay"}, ExitUsage},
		{[]string{"status", "--jsno"}, ExitUsage},
	} {
		for name, want := range map[string]string{"oomwatchctl": "oomwatchctl", "": "oomctl"} {
			var out, errb bytes.Buffer
			code := Main(context.Background(), tc.args, Env{Stdout: &out, Stderr: &errb, Name: name})
			require.Equal(t, tc.code, code, "%q as %q: %s", tc.args, name, errb.String())
			text := out.String() + errb.String()
			assert.Contains(t, text, want, "%q as %q", tc.args, name)
			if want != "oomctl" {
				assert.NotRegexp(t, `\boomctl\b`, text, "%q as %q", tc.args, name)
			}
			// Flags are written --name everywhere, as the README and the completion do.
			assert.NotRegexp(t, `(^|\s|: )-[a-z]`, text, "%q as %q", tc.args, name)
		}
	}
}
