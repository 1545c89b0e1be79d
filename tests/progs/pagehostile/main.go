// Command pagehostile is a test child that misbehaves on its own memstat page, as a
// subject that wants to grow, block or spin oomd would (security invariant 8). It maps
// the page named by OOMD_MEMSTAT_PAGE_FD read-write with mmap and writes it with plain
// stores and atomics at the documented offsets (lib/memstat/page's layout constants),
// ignoring the writer's protocol wherever the mode says so.
//
// It waits until execd delivers its memstat connection (so oomd has accepted the
// handoff and holds the page), publishes one honest value (1 MiB) and attacks on the
// first SIGUSR1. Each further SIGUSR1 toggles between the attack and an honest phase
// that repairs the header and publishes one well-formed value (1 MiB times the number
// of honest phases so far), so a test can end an episode and start another.
// Every phase change prints a line on stdout:
//
//	pagehostile: attacking mode=<mode> phase=<n>
//	pagehostile: honest value=<bytes>
//
// Modes:
//
//	garbage   random bytes over the whole page, in a loop at full speed
//	torn      seq set odd and never completed (a writer stuck mid-cycle)
//	race      several goroutines publishing at full speed, each with the seqlock CAS
//	magic     the magic word scribbled once, then values published that oomd must ignore
//	unmap     a write cycle left half done, munmap, SIGKILL itself
//	rpc       no page attack: prints "pagehostile: connected" and on SIGUSR1 dials the
//	          brokered memstat connection's bootstrap and calls MemstatSink.report
//	          claiming --claim; prints "pagehostile: report refused: <err>" or
//	          "pagehostile: report accepted"
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/lib/memstat/page"
)

func main() {
	mode := flag.String("mode", "garbage", "garbage, torn, race, magic, unmap or rpc")
	writers := flag.Int("writers", 4, "race: publishing goroutines")
	claim := flag.String("claim", "hog", "rpc: the subject the report claims to be")
	flag.Parse()
	log := logx.New("pagehostile")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	// The delivery of the brokered connection follows oomd's acceptance of the handoff.
	d, err := rpcx.InheritedUnixConn(rpcx.EnvMemstatFD)
	if err != nil {
		fail("memstat delivery socket", err)
	}
	conn, err := rpcx.ReceiveConn(d)
	if err != nil {
		fail("memstat delivery", err)
	}
	toggle := make(chan os.Signal, 1)
	signal.Notify(toggle, syscall.SIGUSR1)
	if *mode == "rpc" {
		fmt.Println("pagehostile: connected")
		select {
		case <-ctx.Done():
			return
		case <-toggle:
		}
		report(ctx, conn, *claim, log)
		<-ctx.Done()
		return
	}
	defer conn.Close()

	mem := mapPage()
	a := &attacker{mem: mem, mode: *mode, writers: *writers}
	// A good value first, kept until the first SIGUSR1, so the test can see it reach oomd.
	a.honest()
	select {
	case <-ctx.Done():
		return
	case <-toggle:
	}
	for phase := 1; ; phase++ {
		fmt.Printf("pagehostile: attacking mode=%s phase=%d\n", *mode, phase)
		halt := a.attack()
		select {
		case <-ctx.Done():
			halt()
			return
		case <-toggle:
		}
		halt()
		a.honest()
		select {
		case <-ctx.Done():
			return
		case <-toggle:
		}
	}
}

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "pagehostile: %s: %v\n", step, err)
	os.Exit(1)
}

// mapPage maps the inherited page read-write, directly with mmap (no lib/memstat).
func mapPage() []byte {
	fd, err := strconv.Atoi(os.Getenv(page.EnvFD))
	if err != nil {
		fail("page fd", fmt.Errorf("%s=%q", page.EnvFD, os.Getenv(page.EnvFD)))
	}
	mem, err := unix.Mmap(fd, 0, page.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fail("mmap", err)
	}
	return mem
}

type attacker struct {
	mem     []byte
	mode    string
	writers int
	honestN uint64
}

func (a *attacker) u64(off int) *uint64 { return (*uint64)(unsafe.Pointer(&a.mem[off])) }
func (a *attacker) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&a.mem[off])) }

// honest repairs the header and publishes one value with a complete write cycle.
func (a *attacker) honest() {
	a.honestN++
	atomic.StoreUint32(a.u32(page.OffMagic), page.Magic)
	atomic.StoreUint32(a.u32(page.OffVersion), page.Version)
	seq := atomic.LoadUint64(a.u64(page.OffSeq))&^1 + 1
	atomic.StoreUint64(a.u64(page.OffSeq), seq)
	atomic.StoreUint64(a.u64(page.OffFlags), 0)
	atomic.StoreUint64(a.u64(page.OffBytes), a.honestN<<20)
	c := atomic.LoadUint64(a.u64(page.OffCounter)) + 1
	if c == 0 {
		c = 1
	}
	atomic.StoreUint64(a.u64(page.OffCounter), c)
	atomic.StoreUint64(a.u64(page.OffSeq), seq+1)
	fmt.Printf("pagehostile: honest value=%d\n", a.honestN<<20)
}

// attack starts the mode's misbehaviour and returns a function that stops it.
func (a *attacker) attack() (halt func()) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	loop := func(body func(*rand.Rand)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
			for !stop.Load() {
				body(r)
			}
		}()
	}
	switch a.mode {
	case "garbage":
		var buf [page.PageSize]byte
		loop(func(r *rand.Rand) {
			for i := 0; i < len(buf); i += 8 {
				*(*uint64)(unsafe.Pointer(&buf[i])) = r.Uint64()
			}
			copy(a.mem, buf[:])
		})
	case "torn":
		// Take the page and never give it back; keep the value moving meanwhile.
		atomic.StoreUint64(a.u64(page.OffSeq), atomic.LoadUint64(a.u64(page.OffSeq))|1)
		loop(func(r *rand.Rand) {
			atomic.StoreUint64(a.u64(page.OffBytes), r.Uint64())
			runtime.Gosched()
		})
	case "race":
		for range a.writers {
			loop(func(r *rand.Rand) {
				seq := a.u64(page.OffSeq)
				s := atomic.LoadUint64(seq)
				if s&1 != 0 || !atomic.CompareAndSwapUint64(seq, s, s+1) {
					return
				}
				atomic.StoreUint64(a.u64(page.OffBytes), r.Uint64N(1<<20)) // under every limit
				atomic.AddUint64(a.u64(page.OffCounter), 1)
				atomic.StoreUint64(seq, s+2)
			})
		}
	case "magic":
		atomic.StoreUint32(a.u32(page.OffMagic), ^page.Magic)
		loop(func(r *rand.Rand) {
			seq := a.u64(page.OffSeq)
			s := atomic.LoadUint64(seq) &^ 1
			atomic.StoreUint64(seq, s+1)
			atomic.StoreUint64(a.u64(page.OffBytes), 1<<40) // would cross every limit if read
			atomic.AddUint64(a.u64(page.OffCounter), 1)
			atomic.StoreUint64(seq, s+2)
			runtime.Gosched()
		})
	case "unmap":
		// Die mid-write: seq odd, half a value, the mapping gone, no exit handlers.
		atomic.StoreUint64(a.u64(page.OffSeq), atomic.LoadUint64(a.u64(page.OffSeq))|1)
		atomic.StoreUint64(a.u64(page.OffBytes), 1<<40)
		if err := unix.Munmap(a.mem); err != nil {
			fail("munmap", err)
		}
		fmt.Println("pagehostile: unmapped mid-write; dying")
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	default:
		fail("mode", fmt.Errorf("unknown mode %q", a.mode))
	}
	return func() {
		stop.Store(true)
		wg.Wait()
	}
}

// report calls MemstatSink.report on the bootstrap of the brokered connection, as a
// version-1 subject would.
func report(ctx context.Context, c net.Conn, claim string, log *zap.Logger) {
	rc := rpcx.NewConn(c, capnp.Client{}, log.Named("rpc"))
	defer rc.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sink := oomdpb.MemstatSink(rc.Bootstrap(cctx))
	defer sink.Release()
	err := sink.Report(cctx, func(p oomdpb.MemstatSink_report_Params) error {
		m, err := p.NewSample()
		if err != nil {
			return err
		}
		m.SetBytes(1 << 40)
		m.SetSeq(1)
		return m.SetClaimedSubject(claim)
	})
	if err == nil {
		err = sink.WaitStreaming()
	}
	if err != nil {
		fmt.Printf("pagehostile: report refused: %v\n", err)
		return
	}
	fmt.Println("pagehostile: report accepted")
}
