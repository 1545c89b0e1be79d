package cgroup

import (
	"bytes"
	"os"
	"slices"
	"strconv"
	"sync"

	"oomd.dev/oomd/internal/procstat"
)

// maxTree bounds the processes a proc-mode group tracks.
const maxTree = 4096

// procTree is proc mode's stand-in for a cgroup: the root process and every descendant
// seen so far, each pinned by its start time so a recycled pid is never taken for a
// member. A descendant that was re-parented away before it was first seen (it
// daemonised) is missed: this is why proc mode is weaker.
type procTree struct {
	mu    sync.Mutex
	root  int
	known map[int]uint64 // pid -> start time (clock ticks since boot)
}

// refresh walks the tree from every known live member and returns the live members.
func (t *procTree) refresh() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.known == nil {
		t.known = make(map[int]uint64)
		if st, ok := startTime(t.root); ok {
			t.known[t.root] = st
		}
	}
	// Members of the root's process group (execd starts every subject as its own
	// group): this finds a child that was re-parented when its parent exited, unless it
	// left the group (setsid/setpgid) first.
	rootStart := t.known[t.root]
	for _, pid := range groupMembers(t.root) {
		if _, seen := t.known[pid]; seen || len(t.known) >= maxTree {
			continue
		}
		if st, ok := startTime(pid); ok && st >= rootStart {
			t.known[pid] = st
		}
	}
	// Children of every live member; repeat until nothing new appears.
	queue := t.live()
	for len(queue) > 0 && len(t.known) < maxTree {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children(pid) {
			if _, seen := t.known[c]; seen {
				continue
			}
			if st, ok := startTime(c); ok {
				t.known[c] = st
				queue = append(queue, c)
			}
		}
	}
	return t.live()
}

// live returns the known members still alive with the same start time, sorted, and
// forgets the rest.
func (t *procTree) live() []int {
	var out []int
	for pid, st := range t.known {
		if now, ok := startTime(pid); ok && now == st {
			out = append(out, pid)
		} else {
			delete(t.known, pid)
		}
	}
	slices.Sort(out)
	return out
}

func (t *procTree) knows(pid int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.known[pid]
	if !ok {
		return false
	}
	now, ok := startTime(pid)
	return ok && now == st
}

// children lists pid's children from every thread's children file.
func children(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/children")
		if err != nil {
			continue
		}
		for f := range bytes.FieldsSeq(b) {
			if c, err := strconv.Atoi(string(f)); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// groupMembers lists the processes whose process group is pgid (field 5 of stat).
func groupMembers(pgid int) []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	want := []byte(strconv.Itoa(pgid))
	var out []int
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid == pgid {
			continue
		}
		st, err := procstat.Read(pid)
		if err != nil {
			continue
		}
		if bytes.Equal(st.Field(procstat.FieldPGRP), want) {
			out = append(out, pid)
		}
	}
	return out
}

// startTime is when pid started (clock ticks after boot); a zombie counts as gone.
func startTime(pid int) (uint64, bool) {
	st, err := procstat.Read(pid)
	if err != nil || st.Gone() {
		return 0, false
	}
	v, err := st.Uint(procstat.FieldStartTime)
	return v, err == nil
}
