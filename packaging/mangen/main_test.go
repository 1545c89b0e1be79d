package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestEscapeLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"  -socket path", `  \-socket path`},
		{`a\b`, `a\eb`},
		{".hidden", `\&.hidden`},
		{"'quote", `\&'quote`},
		{"plain", "plain"},
	} {
		assert.Equal(t, tc.want, escapeLine(tc.in), tc.in)
	}
}

func TestCommandsOf(t *testing.T) {
	help := "x\n\nCommands:\n  status   s\n  policy get   g\n  policy set [flags] | --file p   s\n  last-reboot  r\n  help [command]  h\n\nGlobal flags:\n  --json\n"
	assert.Equal(t, []string{"status", "policy get", "policy set", "last-reboot"}, commandsOf(help))
}

func TestRenderRenamesAndDropsTheBuildPath(t *testing.T) {
	p := page{Name: "oomwatchctl", Section: "1", Bin: "oomctl", Path: "/usr/bin/oomwatchctl", Was: "oomctl", Summary: "s", Description: "d"}
	out := string(render(p, "1.0", "Usage of /tmp/go-build1/exe/oomctl:\n  oomctl status\n  oomctld\n", nil))
	assert.True(t, strings.HasPrefix(out, ".TH OOMWATCHCTL 1 "), out)
	assert.Contains(t, out, "\n  oomwatchctl status\n")
	assert.Contains(t, out, "\n  oomctld\n", "only the whole word is renamed")
	assert.NotContains(t, out, "go-build")
}
