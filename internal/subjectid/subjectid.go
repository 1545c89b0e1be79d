// Package subjectid holds the one rule for subject ids, which execd, oomd and logd all
// check: execd when it reads its manifest and when oomd asks it to terminate, oomd's
// policy core on every input naming a subject, logd on every audit record. It is a leaf
// so that execd need not import oomd's policy to check an id.
package subjectid

import (
	"fmt"

	"oomd.dev/oomd/gen/bounds"
)

// MaxBytes bounds a subject id's length.
const MaxBytes = bounds.MaxSubjectBytes

// Validate checks the subject id format: 1..MaxBytes bytes of [a-z0-9._-], starting
// with a letter or digit. The error completes "must be ..." ("a subject id of ...").
func Validate(s string) error {
	if len(s) == 0 || len(s) > MaxBytes {
		return fmt.Errorf("a subject id of 1..%d bytes", MaxBytes)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if alnum || (i > 0 && (c == '.' || c == '_' || c == '-')) {
			continue
		}
		return fmt.Errorf("a subject id of [a-z0-9._-] starting with a letter or digit (bad byte %q at %d)", c, i)
	}
	return nil
}
