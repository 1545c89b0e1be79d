package manifest

import (
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
		{"two watchdogs", `{"services": [{"id": "a", "argv": ["x"], "role": "watchdog"}, {"id": "b", "argv": ["x"], "role": "watchdog"}]}`,
			[]string{`service "b"`, `taken by service "a"`}},
		{"reserved env", `{"services": [{"id": "a", "argv": ["x"], "env": {"OOMD_SUBJECT": "b"}}]}`, []string{`service "a"`, "env", "reserved"}},
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

// FuzzParse: any input either fails cleanly or yields a start order that contains every
// service once, each after its dependencies.
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
	})
}
