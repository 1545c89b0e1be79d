// Command spoofer is a test child that reports memstat samples claiming to be another
// subject, as fast as its connection allows, then tells execd it is ready and waits to
// be stopped. oomd must reject every one of them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/session"
)

func main() {
	claim := flag.String("claim", "hog", "subject id to claim in every sample")
	n := flag.Int("n", 10000, "samples to send")
	bytes := flag.Uint64("bytes", 1<<40, "bytes to claim")
	flag.Parse()
	log := logx.New("spoofer")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	// OOMD_MEMSTAT_FD is a delivery socket: the connection to oomd arrives on it.
	d, err := rpcx.InheritedUnixConn(rpcx.EnvMemstatFD)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, err := rpcx.ReceiveConn(d)
	if err != nil {
		fmt.Fprintln(os.Stderr, "memstat delivery:", err)
		os.Exit(1)
	}
	conn := rpcx.NewConn(c, capnp.Client{}, log)
	defer conn.Close()
	sink := oomdpb.MemstatSink(conn.Bootstrap(ctx))
	defer sink.Release()
	sink.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))
	for i := 1; i <= *n; i++ {
		err := sink.Report(ctx, func(p oomdpb.MemstatSink_report_Params) error {
			s, err := p.NewSample()
			if err != nil {
				return err
			}
			s.SetBytes(*bytes)
			s.SetSeq(uint64(i))
			return s.SetClaimedSubject(*claim)
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
	}
	if err := sink.WaitStreaming(); err != nil {
		fmt.Fprintln(os.Stderr, "stream:", err)
		os.Exit(1)
	}
	fmt.Printf("spoofer: sent %d samples claiming %s\n", *n, *claim)

	sess, err := session.Open(ctx, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer sess.Close()
	if err := sess.Ready(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-ctx.Done()
}
