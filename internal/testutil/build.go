package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// BuildOptions are how BuildPrograms and Programs.Build build; the zero value is the
// environment's defaults, as make build does.
type BuildOptions struct {
	Flags []string // go build flags, e.g. "-race", "-trimpath"
	Env   []string // added to the environment, e.g. "CGO_ENABLED=0"
}

// Race is the build of this test binary: -race when it is a race build (go test -race),
// so the programs its tests start run under the detector too; the defaults otherwise.
func Race() BuildOptions {
	if raceEnabled {
		return BuildOptions{Flags: []string{"-race"}}
	}
	return BuildOptions{}
}

// Programs is a directory of binaries built for one test process: a TestMain builds
// them once, before m.Run, and removes them after.
type Programs struct {
	Dir string
}

// NewPrograms makes an empty temporary directory for binaries.
func NewPrograms() (*Programs, error) {
	dir, err := os.MkdirTemp("", "oomd-test-bin")
	if err != nil {
		return nil, fmt.Errorf("programs directory: %w", err)
	}
	return &Programs{Dir: dir}, nil
}

// BuildPrograms is NewPrograms and one Build; on an error nothing is left behind.
func BuildPrograms(b BuildOptions, pkgs ...string) (*Programs, error) {
	p, err := NewPrograms()
	if err != nil {
		return nil, err
	}
	if err := p.Build(b, pkgs...); err != nil {
		p.Remove()
		return nil, err
	}
	return p, nil
}

// Build builds the main packages pkgs, given relative to the module root
// ("./apps/hog"), into p.Dir with one go build; each binary is named after its
// package's directory (Path("hog")). The error carries go build's output.
func (p *Programs) Build(b BuildOptions, pkgs ...string) error {
	if len(pkgs) == 0 {
		return nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	args := slices.Concat([]string{"build"}, b.Flags, []string{"-o", p.Dir + string(filepath.Separator)}, pkgs)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), b.Env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s go %s: %w\n%s", strings.Join(b.Env, " "), strings.Join(args, " "), err, out)
	}
	return nil
}

// Path is the binary built from the package whose directory is name.
func (p *Programs) Path(name string) string { return filepath.Join(p.Dir, name) }

// Remove deletes the directory and every binary in it.
func (p *Programs) Remove() { os.RemoveAll(p.Dir) }

// ModuleRoot is the directory of the go.mod above the working directory (a test runs
// in its package's directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("module root: %w", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
