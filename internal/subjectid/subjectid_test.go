package subjectid

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestValidate(t *testing.T) {
	for id, ok := range map[string]bool{
		"hog": true, "a": true, "0x": true, "svc.v2_a-b": true, strings.Repeat("a", MaxBytes): true,
		"": false, strings.Repeat("a", MaxBytes+1): false, "Hog": false, "-a": false, ".a": false,
		"a b": false, "a/b": false, "é": false, "a\n": false,
	} {
		assert.Equal(t, ok, Validate(id) == nil, "%q", id)
	}
}
