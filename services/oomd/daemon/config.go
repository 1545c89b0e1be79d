package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"oomd.dev/oomd/services/oomd/policy"
)

// LoadPolicyFile reads a JSON policy over the defaults: fields the file sets replace
// the default, unknown fields are an error, and the result is validated whole.
func LoadPolicyFile(path string) (policy.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return policy.Policy{}, fmt.Errorf("read policy: %w", err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return p, fmt.Errorf("policy file %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy decodes a JSON policy strictly over policy.DefaultPolicy.
func ParsePolicy(b []byte) (policy.Policy, error) {
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
	return p, p.Validate()
}

// position turns a byte offset into "line L, column C".
func position(b []byte, off int64) string {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	line := 1 + bytes.Count(b[:off], []byte{'\n'})
	col := off - int64(bytes.LastIndexByte(b[:off], '\n'))
	return fmt.Sprintf("line %d, column %d", line, col)
}
