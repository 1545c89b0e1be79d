package manifest

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // substrings of the error
	}{
		{"empty", ``, []string{"empty manifest"}},
		{"syntax", "{\"services\": [\n  {\"id\": \"a\",}\n]}", []string{"syntax error at 2:"}},
		{"unknown top-level field", "{\"services\": [],\n \"extra\": 1}", []string{`unknown field "extra"`, "top-level", "at 2:2"}},
		{"unknown service field", "{\"services\": [\n  {\"id\": \"a\", \"argv\": [\"x\"]},\n  {\"id\": \"b\",\n   \"argv\": [\"x\"], \"stopTimout\": 5}\n]}",
			[]string{`unknown field "stopTimout"`, "services[1]", "at 4:19"}},
		{"wrong type", "{\"services\": [{\"id\": \"a\", \"argv\": [\"x\"]},\n {\"id\": \"b\", \"argv\": [\"x\"], \"stopTimeoutMs\": \"5s\"}]}",
			[]string{`field services[1].stopTimeoutMs (service "b") at 2:`, "int64"}},
		{"missing services", `{}`, []string{`"services" is required`}},
		{"trailing content", `{"services": []} {}`, []string{"after the manifest object at 1:18"}},
		{"bad id", `{"services": [{"id": "Hog", "argv": ["x"]}]}`, []string{"services[0]", `id "Hog"`}},
		{"empty id", `{"services": [{"argv": ["x"]}]}`, []string{"services[0]", `id ""`}},
		{"duplicate id", `{"services": [{"id": "a", "argv": ["x"]}, {"id": "a", "argv": ["y"]}]}`, []string{`service "a"`, "used twice"}},
		{"empty argv", `{"services": [{"id": "a", "argv": []}]}`, []string{`service "a"`, "argv"}},
		{"empty argv0", `{"services": [{"id": "a", "argv": [""]}]}`, []string{`service "a"`, "argv"}},
		{"stop timeout too small", `{"services": [{"id": "a", "argv": ["x"], "stopTimeoutMs": 0}]}`, []string{`service "a"`, "stopTimeoutMs", "0 is outside 10..600000"}},
		{"stop timeout too large", `{"services": [{"id": "a", "argv": ["x"], "stopTimeoutMs": 600001}]}`, []string{`service "a"`, "stopTimeoutMs"}},
		{"bad restart", `{"services": [{"id": "a", "argv": ["x"], "restart": "sometimes"}]}`, []string{`service "a"`, "restart", `"sometimes"`}},
		{"bad role", `{"services": [{"id": "a", "argv": ["x"], "role": "king"}]}`, []string{`service "a"`, "role"}},
		{"bad preference", `{"services": [{"id": "a", "argv": ["x"], "preference": "always"}]}`, []string{`service "a"`, "preference", `"always"`}},
		{"two watchdogs", `{"services": [{"id": "a", "argv": ["x"], "role": "watchdog"}, {"id": "b", "argv": ["x"], "role": "watchdog"}]}`,
			[]string{`service "b"`, `taken by service "a"`}},
		{"reserved env", `{"services": [{"id": "a", "argv": ["x"], "env": {"OOMD_SUBJECT": "b"}}]}`, []string{`service "a"`, "env", "reserved"}},
		{"notify socket in env", `{"services": [{"id": "a", "argv": ["x"], "env": {"NOTIFY_SOCKET": "/run/systemd/notify"}}]}`, []string{`service "a"`, "env", "NOTIFY_SOCKET", "watchdog alone"}},
		{"exitWith with restart", `{"services": [{"id": "a", "argv": ["x"], "exitWith": true, "restart": "always"}]}`, []string{`service "a"`, "exitWith"}},
		{"missing dependency", `{"services": [{"id": "a", "argv": ["x"], "dependsOn": ["logd"]}]}`, []string{`service "a"`, "dependsOn", `"logd"`}},
		{"self dependency", `{"services": [{"id": "a", "argv": ["x"], "dependsOn": ["a"]}]}`, []string{`service "a"`, "itself"}},
		{"cycle", `{"services": [
			{"id": "a", "argv": ["x"]},
			{"id": "b", "argv": ["x"], "dependsOn": ["a", "d"]},
			{"id": "c", "argv": ["x"], "dependsOn": ["b"]},
			{"id": "d", "argv": ["x"], "dependsOn": ["c"]}]}`, []string{"cycle b -> d -> c -> b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			require.Error(t, err, tc.name)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w, tc.name)
			}
		})
	}
}

func TestParseDefaultsAndStartOrder(t *testing.T) {
	m, err := Parse([]byte(`{"services": [
		{"id": "hog", "argv": ["hog"], "dependsOn": ["oomd"], "restart": "on-failure", "env": {"A": "${RUNTIME_DIR}/x"}},
		{"id": "oomd", "argv": ["oomd", "--dir=${RUNTIME_DIR}"], "role": "watchdog", "dependsOn": ["logd"], "stopTimeoutMs": 500},
		{"id": "other", "argv": ["other"]},
		{"id": "logd", "argv": ["logd"], "critical": true}
	]}`))
	require.NoError(t, err)
	var ids []string
	for _, s := range m.StartOrder() {
		ids = append(ids, s.ID)
	}
	assert.Equal(t, []string{"other", "logd", "oomd", "hog"}, ids, "dependencies first, ties in manifest order")

	hog := m.Lookup("hog")
	require.NotNil(t, hog)
	assert.Equal(t, int64(DefaultStopTimeoutMs), *hog.StopTimeoutMs)
	assert.Equal(t, RestartOnFailure, hog.Restart)
	assert.Equal(t, RestartNever, m.Lookup("logd").Restart)
	assert.True(t, m.Lookup("oomd").Watchdog())
	assert.Equal(t, int64(500), *m.Lookup("oomd").StopTimeoutMs)
	assert.Nil(t, m.Lookup("nope"))

	m.Expand("/run/x")
	assert.Equal(t, "/run/x/x", hog.Env["A"])
	assert.Equal(t, []string{"oomd", "--dir=/run/x"}, m.Lookup("oomd").Argv)
}

func TestTeardownLevels(t *testing.T) {
	svc := func(id string, deps ...string) string {
		b, _ := json.Marshal(map[string]any{"id": id, "argv": []string{"x"}, "dependsOn": deps})
		return string(b)
	}
	wd := func(id string, deps ...string) string {
		b, _ := json.Marshal(map[string]any{"id": id, "argv": []string{"x"}, "dependsOn": deps, "role": "watchdog"})
		return string(b)
	}
	for _, tc := range []struct {
		name     string
		services []string
		want     [][]string
	}{
		{"no services", nil, [][]string{}},
		{"independent services share one level, reverse start order",
			[]string{svc("a"), svc("b"), svc("c")}, [][]string{{"c", "b", "a"}}},
		{"a chain is one service per level",
			[]string{svc("a"), svc("b", "a"), svc("c", "b")}, [][]string{{"c"}, {"b"}, {"a"}}},
		{"a level waits for the longest chain of dependents",
			[]string{svc("base"), svc("mid", "base"), svc("top", "mid"), svc("leaf", "base")},
			[][]string{{"leaf", "top"}, {"mid"}, {"base"}}},
		{"the watchdog is never stopped; what it depends on goes last",
			[]string{svc("logd"), wd("oomd", "logd"), svc("hog", "oomd"), svc("other")},
			[][]string{{"other", "hog"}, {"logd"}}},
		{"the watchdog's dependencies keep their own order, after a dependent outside",
			[]string{svc("disk"), svc("logd", "disk"), svc("cfg"), wd("oomd", "logd", "cfg"), svc("app", "logd")},
			[][]string{{"app"}, {"cfg", "logd"}, {"disk"}}},
		{"a service depending on the watchdog and on a kept one",
			[]string{svc("logd"), wd("oomd", "logd"), svc("a", "oomd", "logd"), svc("b", "a")},
			[][]string{{"b"}, {"a"}, {"logd"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse([]byte(`{"services": [` + strings.Join(tc.services, ",") + `]}`))
			require.NoError(t, err)
			got := [][]string{}
			for _, level := range m.TeardownLevels() {
				var ids []string
				for _, s := range level {
					ids = append(ids, s.ID)
				}
				got = append(got, ids)
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// FuzzParse: any input either fails cleanly or yields a start order that contains every
// service once, each after its dependencies, and teardown levels that contain every
// service but the watchdog once, each in a later level than everything that depends on
// it (the watchdog aside), the watchdog's dependencies after all the others.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"services": [{"id": "a", "argv": ["x"]}, {"id": "b", "argv": ["y"], "dependsOn": ["a"]}]}`))
	f.Add([]byte(`{"services": [{"id": "a", "argv": ["x"], "dependsOn": ["b"]}, {"id": "b", "argv": ["x"], "dependsOn": ["a"]}]}`))
	f.Add([]byte(`{"services": [{"id": "a", "argv": ["x"], "stopTimeoutMs": "1"}]}`))
	f.Add([]byte(`{"services": [{"id": "a", "argv": ["x"], "zz": 1}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			return
		}
		pos := map[string]int{}
		for i, s := range m.StartOrder() {
			pos[s.ID] = i
		}
		require.Len(t, pos, len(m.Services))
		for _, s := range m.Services {
			for _, d := range s.DependsOn {
				require.Less(t, pos[d], pos[s.ID])
			}
		}

		level, wd := map[string]int{}, ""
		for i, l := range m.TeardownLevels() {
			require.NotEmpty(t, l)
			for _, s := range l {
				_, dup := level[s.ID]
				require.False(t, dup, s.ID)
				level[s.ID] = i
			}
		}
		kept := map[string]bool{}
		for _, s := range m.Services {
			if s.Watchdog() {
				wd = s.ID
				_, in := level[s.ID]
				require.False(t, in, "the watchdog is not stopped")
				for _, d := range s.DependsOn {
					kept[d] = true
				}
			}
		}
		if wd == "" {
			require.Len(t, level, len(m.Services))
		} else {
			require.Len(t, level, len(m.Services)-1)
		}
		for _, s := range m.Services {
			for _, d := range s.DependsOn {
				if s.ID != wd && d != wd {
					require.Less(t, level[s.ID], level[d], "%s depends on %s", s.ID, d)
				}
			}
		}
		for id := range kept {
			for _, s := range m.Services {
				if s.ID != wd && !kept[s.ID] && level[s.ID] > level[id] {
					// s is stopped after a direct dependency of the watchdog: only if
					// the watchdog depends on s too, through that dependency.
					require.Truef(t, dependsOn(m, id, s.ID), "%s stopped after %s, which the watchdog needs", s.ID, id)
				}
			}
		}
	})
}

// dependsOn reports whether a depends on b, directly or not.
func dependsOn(m *Manifest, a, b string) bool {
	seen := map[string]bool{}
	var walk func(id string) bool
	walk = func(id string) bool {
		for _, d := range m.Lookup(id).DependsOn {
			if d == b {
				return true
			}
			if !seen[d] {
				seen[d] = true
				if walk(d) {
					return true
				}
			}
		}
		return false
	}
	return walk(a)
}
