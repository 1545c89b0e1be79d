// Command flooder is a hostile memstat publisher for the flood test: it writes
// pre-encoded MemstatSink.report call frames on its memstat connection as fast as the
// socket takes them and never reads a byte back (no Return is ever consumed, no Finish
// is ever sent; with --drain it reads and discards the Returns, still never finishing). It is what a buggy or malicious subject can do with the connection
// execd gave it, below any client library and its flow limiter.
//
// It prints "flooder <subject>: flooding" once the first frames are written and
// "flooder <subject>: wrote <n> frames" at every multiple of --report frames, so a test can see
// how far it got (with backpressure the writes stall and the count stops growing).
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/session"
)

func main() {
	batch := flag.Int("batch", 64, "call frames per write")
	value := flag.Uint64("bytes", 1<<20, "bytes reported in every sample")
	report := flag.Uint64("report", 1000, "print progress every this many frames")
	drain := flag.Bool("drain", false, "read and discard everything oomd sends (still never send Finish)")
	flag.Parse()
	log := logx.New("flooder")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	c, err := memstatConn()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flooder:", err)
		os.Exit(1)
	}
	defer c.Close()

	sess, err := session.Open(ctx, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flooder:", err)
		os.Exit(1)
	}
	defer sess.Close()
	if err := sess.Ready(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "flooder:", err)
		os.Exit(1)
	}

	go func() {
		<-ctx.Done()
		c.Close() // unblocks a write stalled by backpressure
	}()
	if *drain {
		go io.Copy(io.Discard, c)
	}
	err = flood(c, *batch, *value, *report)
	if ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "flooder: connection ended:", err)
	}
	<-ctx.Done()
}

// memstatConn returns the stream connection to oomd: the inherited fd itself (a direct
// socket) or, when the inherited fd is a SOCK_SEQPACKET delivery socket, the first
// connection passed on it.
func memstatConn() (net.Conn, error) {
	c, err := rpcx.InheritedConn(rpcx.EnvMemstatFD)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var typ int
	var serr error
	if err := raw.Control(func(fd uintptr) { typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE) }); err != nil {
		return nil, err
	}
	if serr != nil || typ != unix.SOCK_SEQPACKET {
		return c, nil
	}
	defer uc.Close()
	_, f, err := rpcx.RecvMsgFD(uc)
	if err != nil {
		return nil, fmt.Errorf("receive memstat connection: %w", err)
	}
	return rpcx.FileToConn(f)
}

func flood(c net.Conn, batch int, value, report uint64) error {
	boot, err := Bootstrap(0)
	if err != nil {
		return err
	}
	if _, err := c.Write(boot); err != nil {
		return err
	}
	frame, off, err := ReportCall(value)
	if err != nil {
		return err
	}
	buf := make([]byte, 0, len(frame)*batch)
	var sent uint64
	qid := uint32(1)
	announced := false
	for {
		buf = buf[:0]
		for range batch {
			buf = append(buf, frame...)
			binary.LittleEndian.PutUint32(buf[len(buf)-len(frame)+off:], qid)
			qid++
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if !announced {
			fmt.Printf("flooder %s: flooding\n", os.Getenv(rpcx.EnvSubject))
			announced = true
		}
		before := sent
		sent += uint64(batch)
		if report > 0 && sent/report != before/report {
			fmt.Printf("flooder %s: wrote %d frames\n", os.Getenv(rpcx.EnvSubject), sent/report*report)
		}
	}
}

// Bootstrap is a Bootstrap message with the given question id, framed for the stream.
func Bootstrap(qid uint32) ([]byte, error) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, err
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		return nil, err
	}
	b, err := m.NewBootstrap()
	if err != nil {
		return nil, err
	}
	b.SetQuestionId(qid)
	return msg.Marshal()
}

const sentinel = 0x7eadbeef

// ReportCall is a framed Call of MemstatSink.report on the bootstrap capability (a
// promise on question 0), and the offset of its questionId in the frame.
func ReportCall(value uint64) (frame []byte, qidOffset int, err error) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, 0, err
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		return nil, 0, err
	}
	call, err := m.NewCall()
	if err != nil {
		return nil, 0, err
	}
	call.SetQuestionId(sentinel)
	call.SetInterfaceId(oomdpb.MemstatSink_TypeID)
	call.SetMethodId(0)
	t, err := call.NewTarget()
	if err != nil {
		return nil, 0, err
	}
	pa, err := t.NewPromisedAnswer()
	if err != nil {
		return nil, 0, err
	}
	pa.SetQuestionId(0)
	payload, err := call.NewParams()
	if err != nil {
		return nil, 0, err
	}
	params, err := oomdpb.NewMemstatSink_report_Params(seg)
	if err != nil {
		return nil, 0, err
	}
	sample, err := params.NewSample()
	if err != nil {
		return nil, 0, err
	}
	sample.SetBytes(value)
	sample.SetSeq(1)
	if err := payload.SetContent(params.ToPtr()); err != nil {
		return nil, 0, err
	}
	call.SendResultsTo().SetCaller()
	frame, err = msg.Marshal()
	if err != nil {
		return nil, 0, err
	}
	var s [4]byte
	binary.LittleEndian.PutUint32(s[:], sentinel)
	qidOffset = bytes.Index(frame, s[:])
	if qidOffset < 0 || bytes.Count(frame, s[:]) != 1 {
		return nil, 0, errors.New("question id not found exactly once in the encoded call")
	}
	return frame, qidOffset, nil
}
