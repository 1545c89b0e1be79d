// Command mangen writes the package's man pages from each binary's --help, so a page
// never says something the binary does not: a short NAME and DESCRIPTION from the table
// below, then the help text verbatim (in a no-fill block), and for the CLI every
// command's own help.
//
//	go run ./packaging/mangen -bin dist/build -out dist/man -version 1.2.3
//
// Pages are gzip-compressed with a zero timestamp, so the same binaries give the same
// bytes.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// page is one man page: Name(Section) documents the binary Bin, installed at Path.
type page struct {
	Name, Section, Bin, Path string
	Summary, Description     string
	// Was is the name the binary calls itself in its help text (the CLI is installed
	// under another name than it was built as); it is replaced by Name.
	Was string
	// Commands: run "<bin> help <command>" for each command listed under "Commands:".
	Commands bool
}

var pages = []page{
	{Name: "oomwatchctl", Section: "1", Bin: "oomctl", Path: "/usr/bin/oomwatchctl", Was: "oomctl", Commands: true,
		Summary: "operate the oomwatch memory watchdog (oomd) through its control socket",
		Description: "oomwatchctl is oomd's oomctl, installed under a name that does not collide with systemd's oomctl(1). " +
			"It shows oomd's status, reads and changes the policy (changes are durable), follows events and reads the audit journal. " +
			"Under the packaged unit the control socket is /run/oomwatch/oomd.sock and only root can reach it."},
	{Name: "oomwatch-execd", Section: "8", Bin: "execd-stub", Path: "/usr/libexec/oomwatch/execd-stub",
		Summary: "process authority of the oomwatch memory watchdog",
		Description: "execd starts the services of its manifest (/etc/oomwatch/manifest.json) in dependency order, each in a cgroup of its own, " +
			"reaps and restarts them, and is the only process that stops a subject, when oomd asks. " +
			"It runs as oomwatch.service (Type=notify, Delegate=yes): it tells systemd READY=1 once oomd is ready, " +
			"and passes the unit's watchdog to oomd alone, through a relay that sends systemd nothing but the WATCHDOG=1 pings of oomd's own process (NotifyAccess=main)."},
	{Name: "oomwatch-oomd", Section: "8", Bin: "oomd", Path: "/usr/libexec/oomwatch/oomd",
		Summary: "the memory watchdog daemon of oomwatch",
		Description: "oomd reads every subject's memory each tick, decides by its policy, writes each kill decision durably to logd's journal " +
			"and only then asks execd to stop the subject. It is started by execd (oomwatch-execd(8)), never by hand. " +
			"Under systemd its tick loop feeds the unit's watchdog, so a frozen oomd gets the unit restarted."},
	{Name: "oomwatch-logd", Section: "8", Bin: "logd-stub", Path: "/usr/libexec/oomwatch/logd-stub",
		Summary: "audit journal of the oomwatch memory watchdog",
		Description: "logd keeps oomd's audit records in an append-only, checksummed journal (/var/lib/oomwatch/journal under the packaged unit) " +
			"and acknowledges a record only after fsync. It is started by execd (oomwatch-execd(8))."},
}

func main() {
	binDir := flag.String("bin", "bin", "directory holding the built binaries")
	out := flag.String("out", "man", "directory the pages are written to (<name>.<section>.gz)")
	version := flag.String("version", "devel", "version named in the pages' footer")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fatal(err)
	}
	for _, p := range pages {
		bin := filepath.Join(*binDir, p.Bin)
		help, err := helpOf(bin, "--help")
		if err != nil {
			fatal(err)
		}
		var cmds []section
		if p.Commands {
			for _, c := range commandsOf(help) {
				h, err := helpOf(bin, append([]string{"help"}, strings.Fields(c)...)...)
				if err != nil {
					fatal(err)
				}
				cmds = append(cmds, section{c, h})
			}
		}
		b := render(p, *version, help, cmds)
		if err := writeGzip(filepath.Join(*out, p.Name+"."+p.Section+".gz"), b); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "mangen:", err)
	os.Exit(1)
}

// helpOf runs bin with args and returns what it printed. Go's flag package prints the
// help on stderr and may exit non-zero, so the exit status is not judged; no output is.
func helpOf(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	if buf.Len() == 0 {
		return "", fmt.Errorf("%s %s printed nothing: %v", bin, strings.Join(args, " "), err)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return "", fmt.Errorf("%s: %w", bin, err)
	}
	return buf.String(), nil
}

// usageOf drops the flag package's "Usage of /some/path/prog:" line, which names the
// path the generator ran rather than anything a reader can type.
var usageOf = regexp.MustCompile(`(?m)^Usage of [^\n]*:\n`)

var commandWord = regexp.MustCompile(`^[a-z][a-z-]*$`)

// commandsOf lists the commands of a "Commands:" block: the leading words of each line's
// first column up to the first argument ("policy set [flags] | ..." gives "policy set"),
// without help.
func commandsOf(help string) []string {
	_, block, ok := strings.Cut(help, "\nCommands:\n")
	if !ok {
		return nil
	}
	block, _, _ = strings.Cut(block, "\n\n")
	var cmds []string
	for line := range strings.SplitSeq(block, "\n") {
		// The command column ends at the first run of two spaces; the summary follows.
		column, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		var words []string
		for _, w := range strings.Fields(column) {
			if !commandWord.MatchString(w) {
				break
			}
			words = append(words, w)
		}
		if len(words) > 0 && words[0] != "help" {
			cmds = append(cmds, strings.Join(words, " "))
		}
	}
	return cmds
}

type section struct{ title, text string }

// render is the roff source of p.
func render(p page, version, help string, cmds []section) []byte {
	var b bytes.Buffer
	upper := strings.ToUpper(p.Name)
	fmt.Fprintf(&b, ".TH %s %s \"\" \"oomwatch %s\" \"oomwatch\"\n", upper, p.Section, escape(version))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", escape(p.Name), escape(p.Summary))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n.B %s\n.RI [ options ]\n", escape(p.Path))
	fmt.Fprintf(&b, ".SH DESCRIPTION\n%s\n", escape(p.Description))
	fmt.Fprintf(&b, ".SH OPTIONS\nAs printed by\n.BR \"%s \\-\\-help\" :\n", escape(p.Name))
	verbatim(&b, rename(usageOf.ReplaceAllString(help, ""), p))
	if len(cmds) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, c := range cmds {
			fmt.Fprintf(&b, ".SS %s\n", escape(c.title))
			verbatim(&b, rename(c.text, p))
		}
	}
	b.WriteString(".SH SEE ALSO\n")
	var see []string
	for _, o := range pages {
		if o.Name != p.Name {
			see = append(see, fmt.Sprintf(".BR %s (%s)", o.Name, o.Section))
		}
	}
	b.WriteString(strings.Join(see, ",\n") + ",\n.BR systemctl (1)\n")
	return b.Bytes()
}

// rename replaces the binary's own name in its help by the installed one.
func rename(text string, p page) string {
	if p.Was == "" {
		return text
	}
	return regexp.MustCompile(`\b`+regexp.QuoteMeta(p.Was)+`\b`).ReplaceAllString(text, p.Name)
}

// verbatim writes text as a no-fill, no-adjust block, so the help's own layout stays.
func verbatim(b *bytes.Buffer, text string) {
	b.WriteString(".nf\n.ad l\n")
	for line := range strings.SplitSeq(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString(escapeLine(strings.ReplaceAll(line, "\t", "        ")) + "\n")
	}
	b.WriteString(".fi\n.ad b\n")
}

// escape makes text safe inside a roff line: backslashes and hyphens (so flags copy and
// paste as ASCII "-").
func escape(s string) string {
	return strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
}

// escapeLine is escape plus protection of a line that would start a roff request.
func escapeLine(s string) string {
	s = escape(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func writeGzip(path string, b []byte) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(b); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
