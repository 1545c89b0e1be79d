package cgroup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Mode is how subjects are contained. Values equal oomdpb.CgroupMode's.
type Mode uint8

const (
	ModeNone Mode = iota // not contained (no handoff of a kernel reading)
	ModeV2
	ModeV1
	ModeProc
)

var modeNames = [...]string{"none", "v2", "v1", "proc"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "unknown"
}

// ParseMode reads a --cgroup flag value: auto (ModeNone: the strongest available), v2,
// v1 or proc.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "auto":
		return ModeNone, nil
	case "v2":
		return ModeV2, nil
	case "v1":
		return ModeV1, nil
	case "proc":
		return ModeProc, nil
	}
	return 0, fmt.Errorf("cgroup mode %q: want auto, v2, v1 or proc", s)
}

// Manager makes and removes subject cgroups in one mode.
type Manager struct {
	mode Mode
	base string // directory holding the subject cgroups (v1, v2); "" for proc
	log  *zap.Logger
}

// Mode is the mode in force.
func (m *Manager) Mode() Mode { return m.mode }

// Base is the directory subject cgroups are made in ("" in proc mode).
func (m *Manager) Base() string { return m.base }

// Options configure Detect.
type Options struct {
	// Want forces a mode (ModeNone: the strongest available). A forced mode that is not
	// available is an error, not a silent fallback.
	Want Mode
	// Root replaces "/" for /proc and /sys lookups; tests only.
	Root string
}

// Detect chooses the mode, makes the parent cgroup and logs the outcome once. In auto
// mode it never fails: what could not be used is logged, naming the path and the error,
// and the next mode is tried, down to proc.
func Detect(opts Options, log *zap.Logger) (*Manager, error) {
	if log == nil {
		log = zap.NewNop()
	}
	try := []Mode{ModeV2, ModeV1}
	if opts.Want != ModeNone {
		try = []Mode{opts.Want}
	}
	for _, mode := range try {
		var base string
		var err error
		switch mode {
		case ModeV2:
			base, err = setupV2(opts.Root, log)
		case ModeV1:
			base, err = setupV1(opts.Root, log)
		case ModeProc:
			log.Warn("subjects are contained by process tree only (--cgroup=proc): weaker, a process that daemonises escapes it")
			return &Manager{mode: ModeProc, log: log}, nil
		}
		if err == nil {
			removeStale(filepath.Dir(base), filepath.Base(base), log)
			log.Info("subject cgroups", zap.Stringer("mode", mode), zap.String("parent", base))
			return &Manager{mode: mode, base: base, log: log}, nil
		}
		if opts.Want != ModeNone {
			return nil, fmt.Errorf("cgroup %s: %w", mode, err)
		}
		log.Info("cgroup mode not usable; trying the next", zap.Stringer("mode", mode), zap.Error(err))
	}
	log.Warn("no writable memory cgroup: falling back to the /proc process tree, which is weaker (a process that daemonises escapes it; RSS is not what the kernel charges)")
	return &Manager{mode: ModeProc, log: log}, nil
}

// parentName is this execd's parent cgroup's name.
func parentName() string { return "oomd-execd." + strconv.Itoa(os.Getpid()) }

// mountPoint returns the mount point of the first cgroup mount for which match(fstype,
// superOptions) is true, from /proc/self/mountinfo.
func mountPoint(root string, match func(fstype string, opts []string) bool) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "/proc/self/mountinfo"))
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		if match(g[0], strings.Split(g[2], ",")) {
			return filepath.Join(root, f[4]), nil
		}
	}
	return "", errors.New("not mounted")
}

// ownPath returns this process's cgroup path in the hierarchy /proc/self/cgroup lists
// with hierarchy id "0" (v2) or with controller in its list (v1).
func ownPath(root string, v2 bool, controller string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "/proc/self/cgroup"))
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if v2 && parts[0] == "0" && parts[1] == "" {
			return parts[2], nil
		}
		if !v2 && slices.Contains(strings.Split(parts[1], ","), controller) {
			return parts[2], nil
		}
	}
	return "", fmt.Errorf("no %s entry in /proc/self/cgroup", map[bool]string{true: "cgroup2", false: controller}[v2])
}

func setupV2(root string, log *zap.Logger) (string, error) {
	mnt, err := mountPoint(root, func(fs string, _ []string) bool { return fs == "cgroup2" })
	if err != nil {
		return "", fmt.Errorf("cgroup2: %w", err)
	}
	own, err := ownPath(root, true, "")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(mnt, own)
	ctrl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return "", err
	}
	if !slices.Contains(strings.Fields(string(ctrl)), "memory") {
		return "", fmt.Errorf("%s: the memory controller is not available (cgroup.controllers: %q)", dir, strings.TrimSpace(string(ctrl)))
	}
	if own != "/" {
		// Not the root: the "no internal processes" rule means execd must leave its
		// cgroup for a leaf of its own before the controller can be enabled below it.
		leaf := filepath.Join(dir, "execd")
		if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return "", err
		}
		if err := writeFile(filepath.Join(leaf, "cgroup.procs"), "0"); err != nil {
			return "", fmt.Errorf("move execd into %s: %w", leaf, err)
		}
	}
	if err := enableMemory(dir); err != nil {
		return "", err
	}
	base := filepath.Join(dir, parentName())
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if err := enableMemory(base); err != nil {
		os.Remove(base)
		return "", err
	}
	return base, nil
}

func enableMemory(dir string) error {
	if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+memory"); err != nil {
		return fmt.Errorf("enable the memory controller below %s: %w", dir, err)
	}
	return nil
}

func setupV1(root string, log *zap.Logger) (string, error) {
	mnt, err := mountPoint(root, func(fs string, o []string) bool { return fs == "cgroup" && slices.Contains(o, "memory") })
	if err != nil {
		return "", fmt.Errorf("cgroup v1 memory: %w", err)
	}
	own, err := ownPath(root, false, "memory")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(mnt, own)
	if _, err := os.Stat(dir); err != nil {
		// A cgroup namespace or a mount of a sub-tree: our path is the mount itself.
		dir = mnt
	}
	base := filepath.Join(dir, parentName())
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(base, "memory.usage_in_bytes")); err != nil {
		os.Remove(base)
		return "", err
	}
	return base, nil
}

// removeStale removes the empty parents of execds that are gone (their pid is free or
// now belongs to a process that is not in that cgroup).
func removeStale(dir, self string, log *zap.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || name == self || !strings.HasPrefix(name, "oomd-execd.") {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimPrefix(name, "oomd-execd."))
		if err != nil || unix.Kill(pid, 0) == nil {
			continue // its execd may still run
		}
		p := filepath.Join(dir, name)
		subs, _ := os.ReadDir(p)
		for _, s := range subs {
			if s.IsDir() {
				os.Remove(filepath.Join(p, s.Name())) // fails (EBUSY) while populated
			}
		}
		if err := os.Remove(p); err == nil {
			log.Info("removed a stale subject cgroup parent", zap.String("path", p))
		}
	}
}

// Close removes the parent cgroup (it must be empty: every Group removed).
func (m *Manager) Close() error {
	if m.base == "" {
		return nil
	}
	return os.Remove(m.base)
}

func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Group is one subject instance's cgroup (or, in proc mode, its process tree).
type Group struct {
	m    *Manager
	name string
	path string   // the cgroup directory; "" in proc mode
	dir  *os.File // v2: the directory, for CLONE_INTO_CGROUP; nil otherwise
	tree procTree // proc mode
}

// Create makes the cgroup for one subject instance. A cgroup of the same name left by
// a crash is reused only if it is empty.
func (m *Manager) Create(subject string, instance uint64) (*Group, error) {
	g := &Group{m: m, name: subject + "." + strconv.FormatUint(instance, 10)}
	if m.mode == ModeProc {
		return g, nil
	}
	g.path = filepath.Join(m.base, g.name)
	if err := os.Mkdir(g.path, 0o755); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create cgroup %s: %w", g.path, err)
		}
		if procs, _ := g.Procs(); len(procs) > 0 {
			return nil, fmt.Errorf("create cgroup %s: it exists and holds %d processes", g.path, len(procs))
		}
	}
	if m.mode == ModeV2 {
		d, err := os.OpenFile(g.path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			os.Remove(g.path)
			return nil, fmt.Errorf("open cgroup %s: %w", g.path, err)
		}
		g.dir = d
	}
	return g, nil
}

// ErrNoMemoryHigh: memory.high exists only on cgroup v2.
var ErrNoMemoryHigh = errors.New("memory.high needs cgroup v2")

// SetHigh sets memory.high: above it the kernel throttles the group by reclaim instead
// of letting it grow (it never kills for it; memory.max would).
func (g *Group) SetHigh(bytes uint64) error {
	if g.m.mode != ModeV2 {
		return ErrNoMemoryHigh
	}
	return writeFile(filepath.Join(g.path, "memory.high"), strconv.FormatUint(bytes, 10))
}

// Name is <subject>.<instance>.
func (g *Group) Name() string { return g.name }

// Path is the cgroup directory ("" in proc mode).
func (g *Group) Path() string { return g.path }

// Mode is the manager's mode.
func (g *Group) Mode() Mode { return g.m.mode }

// Prepare makes cmd start inside the group: CLONE_INTO_CGROUP on v2, the joining shim on
// v1. In proc mode the tree is rooted at the pid after Start (Started).
func (g *Group) Prepare(cmd *exec.Cmd) {
	switch g.m.mode {
	case ModeV2:
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(g.dir.Fd())
	case ModeV1:
		wrapShim(cmd, filepath.Join(g.path, "cgroup.procs"))
	}
}

// Started records the first process (proc mode's tree root).
func (g *Group) Started(pid int) {
	if g.m.mode == ModeProc {
		g.tree.mu.Lock()
		g.tree.root = pid
		g.tree.mu.Unlock()
	}
}

// Usage are the read-only fds oomd gets for one subject: the kernel's count and, with a
// cgroup, memory.stat for the working set (Stat is nil in proc mode, where Usage is the
// /proc/PID directory of the first process).
type Usage struct {
	Usage, Stat *os.File
}

// Close closes both.
func (u Usage) Close() {
	if u.Usage != nil {
		u.Usage.Close()
	}
	if u.Stat != nil {
		u.Stat.Close()
	}
}

// OpenUsage opens fresh read-only fds for oomd (one set per handoff).
func (g *Group) OpenUsage() (Usage, error) {
	open := func(name string) (*os.File, error) {
		return os.OpenFile(filepath.Join(g.path, name), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	var u Usage
	var err error
	switch g.m.mode {
	case ModeV2:
		u.Usage, err = open("memory.current")
	case ModeV1:
		u.Usage, err = open("memory.usage_in_bytes")
	case ModeProc:
		if g.tree.root == 0 {
			return u, errors.New("proc mode: no process yet")
		}
		u.Usage, err = os.OpenFile("/proc/"+strconv.Itoa(g.tree.root), os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		return u, err
	default:
		return u, errors.New("no cgroup")
	}
	if err != nil {
		return u, err
	}
	if u.Stat, err = open("memory.stat"); err != nil {
		u.Close()
		return Usage{}, err
	}
	return u, nil
}

// Procs lists the group's processes (proc mode: the live tree as last seen).
func (g *Group) Procs() ([]int, error) {
	if g.m.mode == ModeProc {
		return g.tree.refresh(), nil
	}
	b, err := os.ReadFile(filepath.Join(g.path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for f := range bytes.FieldsSeq(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Empty reports whether no process is left in the group.
func (g *Group) Empty() (bool, error) {
	if g.m.mode == ModeV2 {
		b, err := os.ReadFile(filepath.Join(g.path, "cgroup.events"))
		if err != nil {
			return false, err
		}
		return bytes.Contains(b, []byte("populated 0")), nil
	}
	pids, err := g.Procs()
	return len(pids) == 0, err
}

// Signal sends sig to every process of the group but skip (0: none) and returns how many
// it reached. The caller signals skip itself (execd's main process, through its pidfd).
func (g *Group) Signal(sig unix.Signal, skip int) (int, error) {
	pids, err := g.Procs()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, pid := range pids {
		if pid != skip && g.signalPid(pid, sig) {
			n++
		}
	}
	return n, nil
}

// signalPid opens a pidfd, checks that the process it names is still in the group (the
// pid may have been recycled since cgroup.procs was read), then signals through it.
func (g *Group) signalPid(pid int, sig unix.Signal) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if !g.member(pid) {
		return false
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0) == nil
}

func (g *Group) member(pid int) bool {
	if g.m.mode == ModeProc {
		return g.tree.knows(pid)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		v2 := parts[0] == "0" && parts[1] == ""
		v1 := slices.Contains(strings.Split(parts[1], ","), "memory")
		if (g.m.mode == ModeV2 && v2) || (g.m.mode == ModeV1 && v1) {
			return strings.HasSuffix(parts[2], "/"+filepath.Base(g.m.base)+"/"+g.name)
		}
	}
	return false
}

// Kill ends every process of the group at once: cgroup.kill where the kernel has it,
// otherwise SIGKILL to each until the group is empty.
func (g *Group) Kill() error {
	if g.m.mode == ModeV2 {
		err := writeFile(filepath.Join(g.path, "cgroup.kill"), "1")
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	_, err := g.Signal(unix.SIGKILL, 0)
	return err
}

// emptyPoll is how often WaitEmpty looks again. v2 could poll cgroup.events for POLLPRI;
// one short loop serves all three modes, and it only runs while a subject is ending.
const emptyPoll = 5 * time.Millisecond

// WaitEmpty returns once the group is empty; if it is not empty by the time ctx ends it
// returns ctx's error. With kill set it SIGKILLs what is left on every round (used after
// the stop timeout: a process forking while being killed is caught on the next round).
func (g *Group) WaitEmpty(ctx context.Context, kill bool) error {
	t := time.NewTicker(emptyPoll)
	defer t.Stop()
	for {
		if kill {
			g.Kill()
		}
		if empty, err := g.Empty(); err != nil || empty {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Remove deletes the cgroup; it must be empty.
func (g *Group) Remove() error {
	if g.dir != nil {
		g.dir.Close()
		g.dir = nil
	}
	if g.path == "" {
		return nil
	}
	if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", g.path, err)
	}
	return nil
}
