package page_test

import (
	"fmt"

	"oomd.dev/oomd/lib/memstat/page"
)

// The three parties in one process: execd creates the page, the subject publishes,
// oomd reads on its tick.
func Example() {
	rw, err := page.Create("oomd-memstat:hog01") // execd
	if err != nil {
		panic(err)
	}
	defer rw.Close()
	ro, err := page.ReadOnly(rw) // execd, for oomd's handoff
	if err != nil {
		panic(err)
	}
	defer ro.Close()

	r, err := page.NewReader(ro) // oomd, at handoff: verifies and maps read-only
	if err != nil {
		panic(err)
	}
	defer r.Close()
	w, err := page.NewWriter(rw) // the subject (lib/memstat does this from OOMD_MEMSTAT_PAGE_FD)
	if err != nil {
		panic(err)
	}

	_, st := r.Read() // oomd's tick
	fmt.Println(st)
	_ = w.Publish(64 << 20)
	s, st := r.Read()
	fmt.Println(st, s.Bytes, s.Counter)
	_, st = r.Read()
	fmt.Println(st)
	_ = w.Close()
	_, st = r.Read()
	fmt.Println(st)
	// Output:
	// never-written
	// ok 67108864 1
	// unchanged
	// closed
}
