// Package policyfile reads oomd's JSON policy file: strictly (unknown fields, keys that differ
// only in case and trailing data are errors, and syntax errors name their line and column),
// over policy.DefaultPolicy, validated whole. oomd reads its --policy file with it and oomctl
// checks a file with it before sending it, so both judge a file the same way.
package policyfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"oomd.dev/oomd/internal/safefile"
	"oomd.dev/oomd/services/oomd/policy"
)

// Load reads a JSON policy over the defaults: fields the file sets replace
// the default, unknown fields are an error, and the result is validated whole.
func Load(path string) (policy.Policy, error) {
	// Not through a symlink, and only a regular file (a FIFO would block the start).
	b, err := safefile.ReadFile(path)
	if err != nil {
		return policy.Policy{}, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return p, fmt.Errorf("policy file %s: %w", path, err)
	}
	return p, nil
}

// Parse decodes a JSON policy strictly over policy.DefaultPolicy.
func Parse(b []byte) (policy.Policy, error) {
	p := policy.DefaultPolicy()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return p, fmt.Errorf("%s: %w", position(b, se.Offset), err)
		case errors.As(err, &te):
			return p, fmt.Errorf("%s: field %q: %w", position(b, te.Offset), te.Field, err)
		}
		return p, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return p, errors.New("trailing data after the policy object")
	}
	if err := exactKeys(b, reflect.TypeOf(p), "policy"); err != nil {
		return p, err
	}
	return p, p.Validate()
}

// exactKeys rejects object keys that differ from the json tags only in case: Go's
// decoder matches case-insensitively, and a strict policy file should not.
func exactKeys(b []byte, t reflect.Type, where string) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return nil // not an object here; the typed decode already judged it
	}
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		fields[name] = t.Field(i).Type
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		ft, ok := fields[k]
		if !ok {
			return fmt.Errorf("%s: unknown field %q (field names are case-sensitive)", where, k)
		}
		if ft.Kind() == reflect.Struct {
			if err := exactKeys(obj[k], ft, where+"."+k); err != nil {
				return err
			}
		}
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			var elems []json.RawMessage
			if json.Unmarshal(obj[k], &elems) == nil {
				for i, e := range elems {
					if err := exactKeys(e, ft.Elem(), fmt.Sprintf("%s.%s[%d]", where, k, i)); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// position turns a byte offset into "line L, column C".
func position(b []byte, off int64) string {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	if off > 0 {
		off-- // the decoder's offset is just past the offending byte
	}
	line := 1 + bytes.Count(b[:off], []byte{'\n'})
	col := off - int64(bytes.LastIndexByte(b[:off], '\n'))
	return fmt.Sprintf("line %d, column %d", line, col)
}
