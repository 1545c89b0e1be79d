package main

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/procstat"
	"oomd.dev/oomd/internal/testutil"
)

// family is a subject whose main process (sh) forks n children that each write their
// pid to dir/<id>.pids and then sleep; with trapTerm every one of them ignores SIGTERM.
func family(id string, n int, trapTerm bool) svc {
	child := `echo $$ >> "$PIDS"; exec sleep 300`
	if trapTerm {
		child = `trap '' TERM; echo $$ >> "$PIDS"; sleep 300 & wait`
	}
	script := `echo $$ >> "$PIDS"; ` + strings.Repeat(`sh -c '`+child+`' & `, n) + `wait`
	if trapTerm {
		script = `trap '' TERM; ` + script
	}
	s := svc{ID: id, Argv: []string{"/bin/sh", "-c", script}, Env: map[string]string{"PIDS": "${RUNTIME_DIR}/" + id + ".pids"}}
	return withDeps(s, "wd")
}

// pidsOf waits until want pids were written to the family's pid file and returns them.
func (h *harness) pidsOf(id string, want int) []int {
	h.t.Helper()
	return testutil.Eventually(h.t, deadline, func() ([]int, bool) {
		b, _ := os.ReadFile(h.path(id + ".pids"))
		var pids []int
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
		return pids, len(pids) >= want
	}, "%d pids of %s", want, id)
}

// alive reports whether pid is a live process (a zombie waiting for its reaper is
// not).
func alive(pid int) bool {
	st, err := procstat.Read(pid)
	return err == nil && !st.Gone()
}

func groupModes(t *testing.T) []string {
	modes := []string{"proc"}
	if _, err := os.Stat("/sys/fs/cgroup/memory/cgroup.procs"); err == nil {
		modes = append([]string{"auto"}, modes...)
	}
	return modes
}

// Every subject is handed to the watchdog with a kernel reading (a read-only fd that
// reads the cgroup's count) and its memstat page.
func TestHandoffCarriesAKernelReadingAndAPage(t *testing.T) {
	for _, mode := range groupModes(t) {
		t.Run(mode, func(t *testing.T) {
			h := startWithArgs(t, []svc{watchdog(), family("fam", 1, false)}, []string{"--cgroup", mode})
			ho := h.nextHandoff()
			require.Equal(t, "fam", ho.subject)
			assert.True(t, ho.hasPage, "a memstat page is handed over")
			assert.NotEqual(t, oomdpb.CgroupMode_none, ho.mode)
			if mode == "proc" {
				assert.Equal(t, oomdpb.CgroupMode_proc, ho.mode)
			} else {
				_, err := strconv.ParseUint(strings.TrimSpace(string(ho.usage)), 10, 64)
				assert.NoError(t, err, "the usage fd reads a number: %q", ho.usage)
			}
			assert.Equal(t, 0, h.stop())
		})
	}
}

// terminate() takes every process of the subject, and the exit is reported only once
// none is left (security invariant 9). With processes that ignore SIGTERM, the stop
// timeout's SIGKILL reaches all of them too.
func TestTerminateTakesTheWholeSubject(t *testing.T) {
	for _, mode := range groupModes(t) {
		for _, stubborn := range []bool{false, true} {
			t.Run(mode+"/stubborn="+strconv.FormatBool(stubborn), func(t *testing.T) {
				fam := family("fam", 3, stubborn)
				fam.StopTimeoutMs = 300
				h := startWithArgs(t, []svc{watchdog(), fam}, []string{"--cgroup", mode})
				exits := h.watchExits()
				h.nextHandoff()
				pids := h.pidsOf("fam", 4)
				res := h.terminate("fam", 1)
				require.Equal(t, oomdpb.Refusal_none, res.refusal, res.detail)
				r := nextExit(t, exits, "fam")
				assert.True(t, r.Terminated)
				for _, pid := range pids {
					assert.False(t, alive(pid), "pid %d of the subject outlived its reported exit", pid)
				}
				assert.Equal(t, 0, h.stop())
			})
		}
	}
}

// A main process that exits on its own does not leave its children running: they are
// stopped before the exit is reported, and stopping the stack leaves nothing behind.
func TestNoProcessOutlivesItsSubject(t *testing.T) {
	for _, mode := range groupModes(t) {
		t.Run(mode, func(t *testing.T) {
			orphaning := withDeps(svc{ID: "orph", Argv: []string{"/bin/sh", "-c", `sh -c 'echo $$ >> "$PIDS"; exec sleep 300' & sleep 0.2; echo $$ >> "$PIDS"; exit 0`},
				Env: map[string]string{"PIDS": "${RUNTIME_DIR}/orph.pids"}}, "wd")
			fam := family("fam", 2, false)
			h := startWithArgs(t, []svc{watchdog(), orphaning, fam}, []string{"--cgroup", mode})
			exits := h.watchExits()
			orph := h.pidsOf("orph", 2)
			r := nextExit(t, exits, "orph")
			assert.Equal(t, int32(0), r.ExitCode)
			for _, pid := range orph {
				assert.False(t, alive(pid), "pid %d outlived its subject's main process", pid)
			}
			pids := h.pidsOf("fam", 3)
			assert.Equal(t, 0, h.stop())
			for _, pid := range pids {
				assert.False(t, alive(pid), "pid %d outlived execd's stop", pid)
			}
		})
	}
}
