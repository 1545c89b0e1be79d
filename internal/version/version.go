// Package version says which build a binary is, for --version: the module version and
// the VCS revision Go stamped into the binary (runtime/debug.ReadBuildInfo), or what
// the linker set with -ldflags "-X oomd.dev/oomd/internal/version.Version=<v>".
package version

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
)

// Version overrides the build info when set at link time.
var Version string

// String is "<version> (<revision>[+dirty], <go version>)".
func String() string {
	v, rev, dirty, goVer := Version, "", false, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVer = bi.GoVersion
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return fmt.Sprintf("%s (%s)", v, goVer) // no VCS stamp (e.g. -buildvcs=false)
	}
	if dirty {
		rev += "+dirty"
	}
	return fmt.Sprintf("%s (%s, %s)", v, rev, goVer)
}

// Flag registers --version on the default flag set; call Exit after flag.Parse.
func Flag() *bool { return flag.Bool("version", false, "print the version and exit") }

// Exit prints "<program> <version>" to w and exits 0 when asked is set.
func Exit(asked *bool, w io.Writer) {
	if *asked {
		fmt.Fprintf(w, "%s %s\n", filepath.Base(os.Args[0]), String())
		os.Exit(0)
	}
}
