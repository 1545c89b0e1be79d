// Package page is the memstat shared page: one sealed memfd page per subject through
// which the subject publishes its cooperative memory value and oomd reads it on every
// tick with no syscall, no allocation and no goroutine per subject.
//
// execd creates the page (Create: memfd, one page, magic and version written, size
// sealed), hands the subject the read-write fd (inherited, named by EnvFD) and oomd a
// read-only reopening of it (ReadOnly). The subject maps it read-write and publishes with
// a seqlock (Writer); oomd checks the fd once at handoff (Verify), maps it read-only and
// reads it each tick (Reader). The layout and both protocols are in docs/memstat-page.md,
// so a publisher in any language can follow them with a few stores.
//
//	// execd, per subject
//	rw, err := page.Create("oomd-memstat:" + subject)
//	ro, err := page.ReadOnly(rw) // to oomd with the handoff; rw is inherited by the child
//
//	// the subject (lib/memstat does this when EnvFD is set)
//	w, err := page.NewWriter(rw)
//	w.Publish(n)
//
//	// oomd, at handoff and then on every tick
//	r, err := page.NewReader(ro) // verifies size and seals, maps read-only
//	s, st := r.Read()            // st tells whether s is new, unchanged, or why not
//
// # The page is hostile input
//
// To oomd every word of the page may hold any value and may change between any two
// loads: the subject, or any process it passes the fd to, can write anything at any
// time. The reader therefore bounds its retries (MaxReadRetries) instead of waiting for a
// consistent read, validates magic and version on every read, and never uses a value to
// index, allocate or loop. What the subject cannot do is change the page's size (the
// seals), so oomd's mapping never faults; hole-punching the page only makes it read as
// zeros (BadMagic).
//
// # Atomics on shared memory and the Go memory model
//
// Both sides access the header words only with sync/atomic on *uint64 pointers into the
// mapping (8-byte aligned: the mapping is page-aligned and every field offset is a
// multiple of 8). The Go memory model speaks of goroutines, not processes, so the
// cross-process guarantee comes from what the compiler emits for these calls: they are
// single, non-tearing machine instructions on the memory itself, whichever process maps
// it, and they are sequentially consistent. On amd64 a load is a MOV and a store an XCHG
// (x86-TSO keeps loads in order and stores in order; XCHG is a full barrier); on arm64 a
// load is LDAR and a store STLR, which the ARMv8 model keeps in program order among
// themselves (RCsc). Those orderings are what a seqlock needs: the writer's odd sequence
// becomes visible before its data, its data before the even sequence, and the reader's
// first sequence load happens before its data loads, which happen before the second
// sequence load. The Go compiler does not elide or merge atomic operations, and the
// mapping is not Go heap, so the garbage collector never moves or scans it.
//
// The fields are in the machine's native byte order, which is little-endian on every
// platform oomd supports (amd64, arm64); the magic is defined so that its bytes read
// "OMSP" in that order.
package page
