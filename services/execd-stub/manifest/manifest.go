// Package manifest reads and validates execd's service manifest: which programs execd
// starts, in which order, and how it supervises and stops them.
//
// The manifest is strict JSON. Unknown fields, wrong types and out-of-range values are
// errors that name the field and its position (line:col) or the service id:
//
//	{"services": [
//	  {"id": "logd", "argv": ["${RUNTIME_DIR}/../bin/logd-stub"], "critical": true},
//	  {"id": "oomd", "argv": ["oomd"], "role": "watchdog", "critical": true,
//	   "dependsOn": ["logd"], "stopTimeoutMs": 5000},
//	  {"id": "hog", "argv": ["hog", "--step", "1048576"], "dependsOn": ["oomd"],
//	   "restart": "on-failure", "injectable": true, "env": {"GOMAXPROCS": "1"}}
//	]}
//
// Fields of a service:
//   - id: the subject id (see subjectid.Validate), unique in the manifest.
//   - argv: program and arguments, non-empty; argv[0] is looked up in PATH if it has no
//     slash.
//   - critical: execd refuses to terminate it on request (defence in depth).
//   - dependsOn: ids started (and ready) before this one, stopped after it. No cycles.
//   - stopTimeoutMs: grace between SIGTERM and SIGKILL, MinStopTimeoutMs..MaxStopTimeoutMs;
//     omitted means DefaultStopTimeoutMs.
//   - restart: "never" (default), "on-failure" (non-zero exit or signal) or "always".
//   - env: extra environment; names must not start with the reserved prefix "OOMD_", nor
//     be systemd's NOTIFY_SOCKET, WATCHDOG_USEC or WATCHDOG_PID (execd passes those to the
//     watchdog alone).
//   - role: "" or "watchdog" (at most one service): the watchdog (oomd) receives the
//     Terminator and SystemControl capabilities and every other child's memstat socket.
//   - injectable: the child serves a TestHook on its memstat connection.
//   - memoryHighBytes: cgroup v2 only: execd sets the subject's memory.high to this, so
//     the kernel throttles a runaway by reclaim while oomd audits its kill (set it a
//     margin above oomd's hardBytes for the subject). Never memory.max: that would let
//     the kernel kill without an audit record. 0 (default) leaves it unset; ignored with
//     a log line under cgroup v1 or /proc containment.
//   - preference: "" (none), "prefer", "avoid" or "never": how oomd weighs it as a victim
//     under system memory pressure (docs/reliability/oom-policy.md); the policy's lists
//     override it, except that never always holds.
//   - exitWith: when this service exits on its own, execd stops the others and exits
//     with its status (the exit code, or 128+signal): for one-shot runs like the
//     selftest. Needs restart "never".
//
// "${RUNTIME_DIR}" in argv and env values is replaced by execd's runtime directory
// (Expand).
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"oomd.dev/oomd/internal/sdnotify"
	"oomd.dev/oomd/internal/subjectid"
)

// Bounds and defaults for stopTimeoutMs.
const (
	DefaultStopTimeoutMs = 3000
	MinStopTimeoutMs     = 10
	MaxStopTimeoutMs     = 600_000
)

// MaxServices bounds the manifest so start-up work and per-child state stay small.
const MaxServices = 256

// RoleWatchdog marks the service that gets the Terminator and the memstat sockets.
const RoleWatchdog = "watchdog"

// RuntimeDirVar is replaced by the runtime directory in argv and env values.
const RuntimeDirVar = "${RUNTIME_DIR}"

// ReservedEnvPrefix names environment variables only execd may set (fd numbers and the
// informational subject); a manifest cannot set or spoof them.
const ReservedEnvPrefix = "OOMD_"

// Restart is a service's restart policy.
type Restart string

// Restart policies.
const (
	RestartNever     Restart = "never"
	RestartOnFailure Restart = "on-failure"
	RestartAlways    Restart = "always"
)

// Service is one entry of the manifest, after defaults were applied.
type Service struct {
	ID            string            `json:"id"`
	Argv          []string          `json:"argv"`
	Critical      bool              `json:"critical"`
	DependsOn     []string          `json:"dependsOn"`
	StopTimeoutMs *int64            `json:"stopTimeoutMs"`
	Restart       Restart           `json:"restart"`
	Env           map[string]string `json:"env"`
	Role          string            `json:"role"`
	Injectable    bool              `json:"injectable"`
	ExitWith      bool              `json:"exitWith"`
	Preference    string            `json:"preference"`
	MemoryHigh    uint64            `json:"memoryHighBytes"`
}

// Preferences are the values of Service.Preference, in oomdpb.Preference's order.
var Preferences = []string{"", "prefer", "avoid", "never"}

// StopTimeout is the grace between SIGTERM and SIGKILL.
func (s *Service) StopTimeout() time.Duration {
	return time.Duration(*s.StopTimeoutMs) * time.Millisecond
}

// Watchdog reports whether this service has the watchdog role.
func (s *Service) Watchdog() bool { return s.Role == RoleWatchdog }

// Manifest is a validated manifest.
type Manifest struct {
	Services []Service `json:"services"`

	// order holds indexes into Services in start order.
	order []int
}

// Load reads and validates the manifest at path.
func Load(path string) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	m, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return m, nil
}

// Parse decodes and validates a manifest.
func Parse(data []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, decodeError(data, err)
	}
	end := int(dec.InputOffset())
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		for end < len(data) && strings.IndexByte(" \t\r\n", data[end]) >= 0 {
			end++
		}
		line, col := position(data, end)
		return nil, fmt.Errorf("unexpected content after the manifest object at %d:%d", line, col)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// StartOrder returns the services in start order: every service after its dependencies,
// ties broken by manifest order. Stop order is its reverse.
func (m *Manifest) StartOrder() []*Service {
	out := make([]*Service, len(m.order))
	for i, idx := range m.order {
		out[i] = &m.Services[idx]
	}
	return out
}

// TeardownLevels returns the order in which a system teardown stops the services, as
// levels. The watchdog is in none of them: it asked for the teardown and ends the system
// itself. Every service the watchdog depends on, directly or not (logd: the audit
// journal), comes after all the others, so it outlives everything that could still make
// a record. Within each of these two groups a service's level is the length of the
// longest chain of services of the same group that depend on it: level 0 holds those
// nothing depends on. No service depends on another of its own level, so a level can be
// stopped at once, and every dependent is stopped (in an earlier level) before what it
// depends on. Each level lists its services in reverse start order.
func (m *Manifest) TeardownLevels() [][]*Service {
	order := m.StartOrder()
	byID := make(map[string]*Service, len(order))
	for _, s := range order {
		byID[s.ID] = s
	}
	keep := map[string]bool{} // what the watchdog depends on, transitively
	var walk func(s *Service)
	walk = func(s *Service) {
		for _, d := range s.DependsOn {
			if !keep[d] {
				keep[d] = true
				walk(byID[d])
			}
		}
	}
	for _, s := range order {
		if s.Watchdog() {
			walk(s)
		}
	}
	group := func(id string) int {
		if keep[id] {
			return 1
		}
		return 0
	}
	// Reverse start order visits every dependent before what it depends on, so a
	// service's level is final when it is reached.
	level := make(map[string]int, len(order))
	var groups [2][][]*Service
	for i := len(order) - 1; i >= 0; i-- {
		s := order[i]
		if s.Watchdog() {
			continue
		}
		g, l := group(s.ID), level[s.ID]
		for len(groups[g]) <= l {
			groups[g] = append(groups[g], nil)
		}
		groups[g][l] = append(groups[g][l], s)
		for _, d := range s.DependsOn {
			// A dependency in the other group (only ever the kept one) or the watchdog
			// is ordered by the grouping, not by levels.
			if group(d) == g && !byID[d].Watchdog() {
				level[d] = max(level[d], l+1)
			}
		}
	}
	return append(groups[0], groups[1]...)
}

// Lookup returns the service with that id, or nil.
func (m *Manifest) Lookup(id string) *Service {
	for i := range m.Services {
		if m.Services[i].ID == id {
			return &m.Services[i]
		}
	}
	return nil
}

// Expand replaces RuntimeDirVar in every argv element and env value.
func (m *Manifest) Expand(runtimeDir string) {
	for i := range m.Services {
		s := &m.Services[i]
		for j := range s.Argv {
			s.Argv[j] = strings.ReplaceAll(s.Argv[j], RuntimeDirVar, runtimeDir)
		}
		for k, v := range s.Env {
			s.Env[k] = strings.ReplaceAll(v, RuntimeDirVar, runtimeDir)
		}
	}
}

func (m *Manifest) validate() error {
	if m.Services == nil {
		return errors.New(`field "services" is required (a list of services)`)
	}
	if len(m.Services) > MaxServices {
		return fmt.Errorf("services: %d entries, at most %d", len(m.Services), MaxServices)
	}
	index := make(map[string]int, len(m.Services))
	watchdog := ""
	for i := range m.Services {
		s := &m.Services[i]
		where := fmt.Sprintf("services[%d]", i)
		if err := subjectid.Validate(s.ID); err != nil {
			return fmt.Errorf("%s: id %q: must be %v", where, s.ID, err)
		}
		where = fmt.Sprintf("service %q", s.ID)
		if prev, dup := index[s.ID]; dup {
			return fmt.Errorf("%s: id is used twice (services[%d] and services[%d])", where, prev, i)
		}
		index[s.ID] = i
		if len(s.Argv) == 0 || s.Argv[0] == "" {
			return fmt.Errorf("%s: argv: must name a program (a non-empty list, argv[0] not empty)", where)
		}
		if s.StopTimeoutMs == nil {
			d := int64(DefaultStopTimeoutMs)
			s.StopTimeoutMs = &d
		} else if v := *s.StopTimeoutMs; v < MinStopTimeoutMs || v > MaxStopTimeoutMs {
			return fmt.Errorf("%s: stopTimeoutMs: %d is outside %d..%d (omit it for the default %d)",
				where, v, MinStopTimeoutMs, MaxStopTimeoutMs, DefaultStopTimeoutMs)
		}
		switch s.Restart {
		case "":
			s.Restart = RestartNever
		case RestartNever, RestartOnFailure, RestartAlways:
		default:
			return fmt.Errorf("%s: restart: %q is not one of %q, %q, %q", where, s.Restart,
				RestartNever, RestartOnFailure, RestartAlways)
		}
		if s.ExitWith && s.Restart != RestartNever {
			return fmt.Errorf("%s: exitWith: needs restart %q (got %q): execd exits when it does", where, RestartNever, s.Restart)
		}
		if !slices.Contains(Preferences, s.Preference) {
			return fmt.Errorf("%s: preference: %q is not \"\", \"prefer\", \"avoid\" or \"never\"", where, s.Preference)
		}
		switch s.Role {
		case "":
		case RoleWatchdog:
			if watchdog != "" {
				return fmt.Errorf("%s: role: %q is already taken by service %q (at most one watchdog)",
					where, RoleWatchdog, watchdog)
			}
			watchdog = s.ID
		default:
			return fmt.Errorf("%s: role: %q is not \"\" or %q", where, s.Role, RoleWatchdog)
		}
		for k := range s.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return fmt.Errorf("%s: env: %q is not a valid variable name", where, k)
			}
			if strings.HasPrefix(k, ReservedEnvPrefix) {
				return fmt.Errorf("%s: env: %q uses the prefix %q reserved for execd", where, k, ReservedEnvPrefix)
			}
			if slices.Contains(sdnotify.Vars, k) {
				return fmt.Errorf("%s: env: %q is systemd's notify protocol, which execd passes to the watchdog alone", where, k)
			}
		}
		for _, d := range s.DependsOn {
			if d == s.ID {
				return fmt.Errorf("%s: dependsOn: a service cannot depend on itself", where)
			}
		}
	}
	for i := range m.Services {
		s := &m.Services[i]
		seen := make(map[string]bool, len(s.DependsOn))
		for _, d := range s.DependsOn {
			if _, ok := index[d]; !ok {
				return fmt.Errorf("service %q: dependsOn: no service has id %q", s.ID, d)
			}
			if seen[d] {
				return fmt.Errorf("service %q: dependsOn: %q is listed twice", s.ID, d)
			}
			seen[d] = true
		}
	}
	order, err := startOrder(m.Services, index)
	if err != nil {
		return err
	}
	m.order = order
	return nil
}

// startOrder is a topological sort (Kahn) that always picks the earliest ready service
// in manifest order, so the order is deterministic. On a cycle it returns an error
// naming the cycle's path.
func startOrder(svcs []Service, index map[string]int) ([]int, error) {
	pending := make([]int, len(svcs)) // unstarted dependencies per service
	for i := range svcs {
		pending[i] = len(svcs[i].DependsOn)
	}
	done := make([]bool, len(svcs))
	order := make([]int, 0, len(svcs))
	for len(order) < len(svcs) {
		next := -1
		for i := range svcs {
			if !done[i] && pending[i] == 0 {
				next = i
				break
			}
		}
		if next < 0 {
			return nil, fmt.Errorf("dependsOn: cycle %s", findCycle(svcs, index, done))
		}
		done[next] = true
		order = append(order, next)
		for i := range svcs {
			if slices.Contains(svcs[i].DependsOn, svcs[next].ID) {
				pending[i]--
			}
		}
	}
	return order, nil
}

// findCycle follows dependencies among the services not yet placed (every one of them
// is on or leads to a cycle) until an id repeats, and formats that cycle "a -> b -> a".
func findCycle(svcs []Service, index map[string]int, done []bool) string {
	cur := -1
	for i := range svcs {
		if !done[i] {
			cur = i
			break
		}
	}
	pos := map[int]int{}
	var path []int
	for {
		if p, ok := pos[cur]; ok {
			ids := make([]string, 0, len(path)-p+1)
			for _, i := range path[p:] {
				ids = append(ids, svcs[i].ID)
			}
			ids = append(ids, svcs[cur].ID)
			return strings.Join(ids, " -> ")
		}
		pos[cur] = len(path)
		path = append(path, cur)
		for _, d := range svcs[cur].DependsOn {
			if j := index[d]; !done[j] {
				cur = j
				break
			}
		}
	}
}

// decodeError turns an encoding/json error into one that names the field and position.
func decodeError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := position(data, int(syn.Offset))
		return fmt.Errorf("syntax error at %d:%d: %v", line, col, syn)
	case errors.As(err, &typ):
		line, col := position(data, int(typ.Offset))
		field := typ.Field
		if field == "" {
			field = "(top level)"
		}
		if rest, ok := strings.CutPrefix(field, "services."); ok {
			if i, id, ok := serviceAt(data, int(typ.Offset)); ok {
				field = fmt.Sprintf("services[%d].%s (service %q)", i, rest, id)
			}
		}
		return fmt.Errorf("field %s at %d:%d: expected %v, got JSON %s", field, line, col, typ.Type, typ.Value)
	case errors.Is(err, io.EOF):
		return errors.New("empty manifest: expected an object {\"services\": [...]}")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		if off, path, ok := findUnknownKey(data); ok {
			line, col := position(data, off)
			return fmt.Errorf("unknown field %s in %s at %d:%d", name, path, line, col)
		}
		return fmt.Errorf("unknown field %s", name)
	}
	return fmt.Errorf("decode: %w", err)
}

// serviceFields and topFields are the keys the decoder accepts; findUnknownKey walks
// the document to locate the first other key, since encoding/json does not say where.
var (
	topFields     = []string{"services"}
	serviceFields = []string{"id", "argv", "critical", "dependsOn", "stopTimeoutMs", "restart", "env", "role", "injectable", "exitWith", "preference", "memoryHighBytes"}
)

// findUnknownKey returns the byte offset and path of the first object key that is not
// a manifest field. encoding/json matches keys case-insensitively, and so does this.
func findUnknownKey(data []byte) (off int, path string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	known := func(fields []string, k string) bool {
		return slices.ContainsFunc(fields, func(f string) bool { return strings.EqualFold(f, k) })
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 0, "", false
	}
	for dec.More() {
		keyOff := keyStart(data, int(dec.InputOffset()))
		t, err := dec.Token()
		if err != nil {
			return 0, "", false
		}
		key, _ := t.(string)
		if !known(topFields, key) {
			return keyOff, "the top-level object", true
		}
		if !strings.EqualFold(key, "services") {
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return 0, "", false
		}
		for i := 0; dec.More(); i++ {
			if t, err := dec.Token(); err != nil || t != json.Delim('{') {
				return 0, "", false
			}
			for dec.More() {
				keyOff := keyStart(data, int(dec.InputOffset()))
				t, err := dec.Token()
				if err != nil {
					return 0, "", false
				}
				if key, _ := t.(string); !known(serviceFields, key) {
					return keyOff, fmt.Sprintf("services[%d]", i), true
				}
				var skip json.RawMessage
				if err := dec.Decode(&skip); err != nil {
					return 0, "", false
				}
			}
			if _, err := dec.Token(); err != nil { // '}'
				return 0, "", false
			}
		}
		if _, err := dec.Token(); err != nil { // ']'
			return 0, "", false
		}
	}
	return 0, "", false
}

// serviceAt returns the index and id of the services entry that contains byte offset off.
func serviceAt(data []byte, off int) (idx int, id string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 0, "", false
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return 0, "", false
		}
		if key, _ := t.(string); !strings.EqualFold(key, "services") {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return 0, "", false
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return 0, "", false
		}
		for i := 0; dec.More(); i++ {
			start := int(dec.InputOffset())
			var raw json.RawMessage
			if dec.Decode(&raw) != nil {
				return 0, "", false
			}
			if off >= start && off <= int(dec.InputOffset()) {
				var entry struct{ ID any }
				_ = json.Unmarshal(raw, &entry)
				id, _ := entry.ID.(string)
				return i, id, true
			}
		}
		return 0, "", false
	}
	return 0, "", false
}

// keyStart skips the separators between the previous token's end and the next key.
func keyStart(data []byte, off int) int {
	for off < len(data) && strings.IndexByte(" \t\r\n,{:", data[off]) >= 0 {
		off++
	}
	return off
}

// position converts a byte offset into a 1-based line and column (in bytes).
func position(data []byte, off int) (line, col int) {
	off = min(max(off, 0), len(data))
	line = 1 + bytes.Count(data[:off], []byte{'\n'})
	col = off - bytes.LastIndexByte(data[:off], '\n')
	return line, col
}
