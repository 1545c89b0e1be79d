package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"oomd.dev/oomd/internal/wire"
)

// humanBytes renders n for people: "0", "512 B", "8 MiB", "12.5 MiB" (wire.HumanBytes,
// shared with oomd's log lines). Exact values are in --json and in the policy view.
func humanBytes(n uint64) string { return wire.HumanBytes(n) }

// sizeSuffixes are the suffixes parseSize accepts, all 1024-based: operators write "8M"
// and mean MiB, and a memory watchdog has no use for powers of ten.
var sizeSuffixes = []struct {
	s     string
	shift uint
}{
	{"kib", 10}, {"mib", 20}, {"gib", 30}, {"tib", 40},
	{"k", 10}, {"m", 20}, {"g", 30}, {"t", 40}, {"b", 0},
}

// parseSize reads a byte count: digits with an optional suffix (see sizeSuffixes).
func parseSize(s string) (uint64, error) {
	num, shift := strings.ToLower(strings.TrimSpace(s)), uint(0)
	for _, x := range sizeSuffixes {
		if strings.HasSuffix(num, x.s) {
			num, shift = strings.TrimSpace(strings.TrimSuffix(num, x.s)), x.shift
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (a byte count, or with a suffix K, M, G, T, KiB, MiB, GiB, TiB)", s)
	}
	if n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << shift, nil
}

// jsonLine writes v as one line of JSON.
func jsonLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// enumName is a schema enumerant's name, or "unknown(<n>)" for one this oomctl does not
// know (a newer oomd may add enumerants; never read them as the first value).
func enumName(name string, n uint16) string {
	if name == "" || name == "unknown" {
		return fmt.Sprintf("unknown(%d)", n)
	}
	return name
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
