package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strconv"
	"strings"

	"oomd.dev/oomd/services/oomd/policy"
)

// humanBytes renders n for people: "0", "512 B", "8 MiB", "12.5 MiB" (policy.HumanBytes,
// shared with oomd's log lines). Exact values are in --json and in the policy view.
func humanBytes(n uint64) string { return policy.HumanBytes(n) }

// sizeSuffixes are the suffixes parseSize accepts. K, M, G, T and KiB..TiB are
// 1024-based (operators write "8M" and mean MiB, as systemd's MemoryMax= and docker do);
// KB, MB, GB, TB are the SI units, 1000-based, as their names say.
var sizeSuffixes = []struct {
	s    string
	mult uint64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
}

// memTotal is the machine's MemTotal in bytes, for sizes given in percent (a variable
// so tests can set it).
var memTotal = func() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo MemTotal: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo has no MemTotal")
}

// parseSize reads a byte count: a number, whole or with a fraction ("0.5G"), with an
// optional suffix (see sizeSuffixes), or a percentage of this machine's MemTotal
// ("25%"). Fractions of a byte are dropped.
func parseSize(s string) (uint64, error) {
	num := strings.ToLower(strings.TrimSpace(s))
	bad := fmt.Errorf("%q is not a size (bytes, optionally with a fraction and a suffix K, M, G, T or KiB..TiB (1024-based), KB, MB, GB, TB (1000-based), or a percentage of memory like 25%%)", s)
	mult := new(big.Rat).SetInt64(1)
	if p, ok := strings.CutSuffix(num, "%"); ok {
		total, err := memTotal()
		if err != nil {
			return 0, fmt.Errorf("%q: a percentage of memory needs MemTotal: %w", s, err)
		}
		num = strings.TrimSpace(p)
		mult.SetFrac(new(big.Int).SetUint64(total), big.NewInt(100))
	} else {
		for _, x := range sizeSuffixes {
			if strings.HasSuffix(num, x.s) {
				num = strings.TrimSpace(strings.TrimSuffix(num, x.s))
				mult.SetInt(new(big.Int).SetUint64(x.mult))
				break
			}
		}
	}
	// Digits with at most one '.', digits on its left: no sign, exponent or "Inf".
	whole, frac, _ := strings.Cut(num, ".")
	if whole == "" || strings.Trim(whole, "0123456789") != "" || strings.Trim(frac, "0123456789") != "" ||
		strings.HasSuffix(num, ".") {
		return 0, bad
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, bad
	}
	r.Mul(r, mult)
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !n.IsUint64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n.Uint64(), nil
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
