package policy

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

var units = []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}

// CompactBytes is HumanBytes without the space ("16MiB", "512B"), for key=value lines.
func CompactBytes(n uint64) string { return strings.ReplaceAll(HumanBytes(n), " ", "") }

// HumanBytes renders n for people: "0", "512 B", "8 MiB", "12.5 MiB" (1024-based, one
// decimal at most). oomd's log lines, oomctl and the Human form of FormatEvent share it.
func HumanBytes(n uint64) string {
	if n == 0 {
		return "0"
	}
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	k := (bits.Len64(n) - 1) / 10 // largest unit that n reaches
	for ; ; k++ {
		v := float64(n) / math.Pow(1024, float64(k))
		s := strconv.FormatFloat(v, 'f', 1, 64)
		if s == "1024.0" && k+1 < len(units) {
			continue // rounding reached the next unit
		}
		return strings.TrimSuffix(s, ".0") + " " + units[k]
	}
}
