package testutil

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
)

// Option changes what Run does.
type Option func(*runConfig)

type runConfig struct {
	known []knownLeak
}

type knownLeak struct {
	why   string
	sites []string
}

// LeaksReportOnly makes Run print, and not fail on, the leaks of clients created under
// one of sites (a substring of a frame of the creation stack, such as
// "daemon.(*LogdAuditor).connect"), or every leak without sites: for a known leak in
// the code under test, until it is fixed. Other leaks still fail. why says which leak
// and where it is tracked.
func LeaksReportOnly(why string, sites ...string) Option {
	return func(c *runConfig) { c.known = append(c.known, knownLeak{why: why, sites: sites}) }
}

// match reports whether the leak msg is one of k's.
func (k knownLeak) match(msg string) bool {
	if len(k.sites) == 0 {
		return true
	}
	for _, s := range k.sites {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// leaks collects capnp's leak reports; its finalizers call record from the finalizer
// goroutine.
var leaks struct {
	sync.Mutex
	msgs []string
}

func record(msg string) {
	leaks.Lock()
	leaks.msgs = append(leaks.msgs, msg)
	leaks.Unlock()
}

// Main is os.Exit(Run(m, opts...)), the TestMain of a package whose tests create capnp
// clients and that has nothing else to do before or after its tests.
func Main(m *testing.M, opts ...Option) {
	os.Exit(Run(m, opts...))
}

// Run runs m's tests with capnp's client-leak reporting on and returns the exit code for
// os.Exit: m.Run's, or 1 if the tests passed but a capnp.Client (or ClientSnapshot) was
// garbage collected without having been released. The leaks go to stderr, each with the
// stack that created the client.
//
// Call it before anything creates a client (capnp sets its leak finalizer when a client
// is made), so first thing in TestMain. capnp reports leaks from finalizers, so after
// the tests Run collects garbage until the finalizers of what was unreachable have run;
// a client still reachable then (held by a goroutine a test left running) is not seen.
func Run(m *testing.M, opts ...Option) int {
	var c runConfig
	for _, o := range opts {
		o(&c)
	}
	capnp.SetClientLeakFunc(record)
	code := m.Run()
	var failing []string
	known := make([][]string, len(c.known))
next:
	for _, msg := range collectLeaks() {
		for i, k := range c.known {
			if k.match(msg) {
				known[i] = append(known[i], msg)
				continue next
			}
		}
		failing = append(failing, msg)
	}
	for i, k := range c.known {
		if len(known[i]) > 0 {
			fmt.Fprintf(os.Stderr, "capnp client leak check: report only (%s):\n%s", k.why, leakReport(known[i]))
		}
	}
	if len(failing) == 0 {
		return code
	}
	fmt.Fprint(os.Stderr, leakReport(failing))
	if code == 0 {
		code = 1
	}
	return code
}

// collectLeaks runs the garbage collector and waits for the finalizers it queued, a few
// rounds (an object reachable only from another finalizable one is freed a cycle
// later), and returns the leaks reported so far. This is GC mechanics, not waiting for
// the code under test. The finalizer goroutine takes its whole queue at once and runs
// it before taking more, so once a later round's sentinel has run, every finalizer the
// earlier rounds queued has run too.
func collectLeaks() []string {
	for range 4 {
		finalizeOnce()
	}
	leaks.Lock()
	defer leaks.Unlock()
	return slices.Clone(leaks.msgs)
}

// sentinel is big enough and holds a pointer, so it is not a tiny allocation (whose
// finalizer may never run).
type sentinel struct {
	_ *int
	_ [32]byte
}

func finalizeOnce() {
	done := make(chan struct{})
	s := new(sentinel)
	runtime.SetFinalizer(s, func(*sentinel) { close(done) })
	s = nil
	runtime.GC()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // a finalizer that blocks: report what we have
		fmt.Fprintln(os.Stderr, "capnp client leak check: finalizers did not run within 10s")
	}
}

// leakReport lists the leaks by creation site, most frequent first.
func leakReport(msgs []string) string {
	count := map[string]int{}
	for _, m := range msgs {
		count[normalizeStack(m)]++
	}
	sites := make([]string, 0, len(count))
	for s := range count {
		sites = append(sites, s)
	}
	slices.SortFunc(sites, func(a, b string) int {
		if d := count[b] - count[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "capnp client leak check: %d client(s) garbage collected without Release, from %d creation site(s):\n",
		len(msgs), len(sites))
	for _, s := range sites {
		fmt.Fprintf(&b, "--- %d x %s\n", count[s], s)
	}
	return b.String()
}

// normalizeStack drops what differs between two leaks from the same site: the
// goroutine numbers and the argument values of each frame.
func normalizeStack(msg string) string {
	lines := strings.Split(strings.TrimRight(msg, "\n"), "\n")
	out := lines[:0]
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.Contains(l, "SetClientLeakFunc.func"): // capnp's reporting itself
			i++ // and its file line
			continue
		case strings.HasPrefix(l, "goroutine ") && strings.HasSuffix(l, ":"):
			continue
		case l == "":
			continue
		case strings.HasPrefix(l, "created by "):
			if i := strings.Index(l, " in goroutine "); i > 0 {
				l = l[:i]
			}
		case !strings.HasPrefix(l, "\t") && strings.HasSuffix(l, ")"):
			if i := strings.LastIndexByte(l, '('); i > 0 {
				l = l[:i] + "(...)"
			}
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
