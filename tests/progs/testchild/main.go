// Command testchild is a child program for execd's integration tests. Each flag turns
// on one behaviour; without --exit it runs until SIGTERM. Events go to --log as lines
// "<event> <name>", one write each (O_APPEND), so the test sees the order in which
// children saw them.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

var (
	name        = flag.String("name", "", "name used in --log lines")
	logPath     = flag.String("log", "", "append event lines here")
	fdsPath     = flag.String("fds", "", "write the open fds (fd and target, one a line) here, first thing")
	environPath = flag.String("environ", "", "write the environment (NAME=value, one a line) here, before start")
	exitCode    = flag.Int("exit", -1, "exit with this code right after start (and the other one-shot actions)")
	ready       = flag.Bool("ready", false, "call Session.ready()")
	gate        = flag.String("gate", "", "before ready: block until a byte arrives on this FIFO")
	ignoreTerm  = flag.Bool("ignore-term", false, "log SIGTERM but keep running")
	memstatByte = flag.Bool("memstat-byte", false, "on every connection delivered on OOMD_MEMSTAT_FD: answer each byte with 'x'")
	whoamiPath  = flag.String("whoami", "", "write whoami and the grants error as JSON here")
	orphanPath  = flag.String("orphan", "", "start a grandchild that outlives us; write its pid here")
	failFirst   = flag.Uint64("fail-first", 0, "exit 1 if whoami's instance is at most this")
	proxyTerm   = flag.String("proxy-term", "", "watchdog: dial this stream socket and serve the granted Terminator on it")
	proxyHand   = flag.String("proxy-handoffs", "", "watchdog: dial this seqpacket socket and forward every handoff to it")
	proxySystem = flag.String("proxy-system", "", "watchdog: dial this stream socket and serve the granted SystemControl on it")
	rebootWatch = flag.String("reboot-watcher", "", `register a reboot watcher through the session: "answer" or "hang" (never answers)`)
	rebootGate  = flag.String("reboot-gate", "", "with --reboot-watcher answer: answer only once a byte arrives on this FIFO")
	termExit    = flag.Int("term-exit", 0, "exit with this code on SIGTERM")
	grandchild  = flag.Bool("grandchild", false, "internal: block until fd 3 reaches EOF, then exit")
)

// Whoami is what --whoami writes.
type Whoami struct {
	Subject   string `json:"subject"`
	Instance  uint64 `json:"instance"`
	Critical  bool   `json:"critical"`
	GrantsErr string `json:"grantsErr"`
	EnvClaim  string `json:"envClaim"`
}

func main() {
	flag.Parse()
	if *fdsPath != "" {
		listFds(*fdsPath) // first, before the runtime or this program opens anything
	}
	if *grandchild {
		f := os.NewFile(3, "pipe")
		buf := make([]byte, 1)
		f.Read(buf)
		os.Exit(0)
	}
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	go func() {
		for range hups {
			event("sighup")
		}
	}()
	if err := run(terms); err != nil {
		fmt.Fprintf(os.Stderr, "testchild %s: %v\n", *name, err)
		os.Exit(2)
	}
}

func run(terms chan os.Signal) error {
	if *environPath != "" {
		if err := writeAtomic(*environPath, []byte(strings.Join(os.Environ(), "\n")+"\n")); err != nil {
			return err
		}
	}
	event("start")
	ctx := context.Background()

	var sess oomdpb.Session
	needSession := *ready || *whoamiPath != "" || *failFirst > 0 || *proxyTerm != "" || *rebootWatch != ""
	if needSession {
		c, err := rpcx.InheritedConn(rpcx.EnvSessionFD)
		if err != nil {
			return err
		}
		conn := rpcx.NewConn(c, capnp.Client{}, nil)
		defer conn.Close()
		sess = oomdpb.Session(conn.Bootstrap(ctx))
		defer sess.Release()
	}
	if *failFirst > 0 {
		w, err := whoami(ctx, sess)
		if err != nil {
			return err
		}
		if w.Instance <= *failFirst {
			event("fail")
			os.Exit(1)
		}
	}
	if *whoamiPath != "" {
		w, err := whoami(ctx, sess)
		if err != nil {
			return err
		}
		f, rel := sess.Grants(ctx, nil)
		if _, err := f.Struct(); err != nil {
			w.GrantsErr = err.Error()
		}
		rel()
		w.EnvClaim = os.Getenv(rpcx.EnvSubject)
		b, _ := json.Marshal(w)
		if err := writeAtomic(*whoamiPath, b); err != nil {
			return err
		}
	}
	if *memstatByte {
		d, err := rpcx.InheritedUnixConn(rpcx.EnvMemstatFD)
		if err != nil {
			return err
		}
		defer d.Close()
		go answerMemstat(d)
	}
	if *orphanPath != "" {
		if err := startGrandchild(*orphanPath); err != nil {
			return err
		}
	}
	if *proxyTerm != "" {
		stop, err := proxy(ctx, sess)
		if err != nil {
			return err
		}
		defer stop()
	}
	if *rebootWatch != "" {
		if err := watchReboot(ctx, sess); err != nil {
			return err
		}
	}
	if *gate != "" {
		f, err := os.Open(*gate)
		if err != nil {
			return err
		}
		b := make([]byte, 1)
		_, err = f.Read(b)
		f.Close()
		if err != nil {
			return fmt.Errorf("gate: %w", err)
		}
	}
	if *ready {
		event("ready")
		f, rel := sess.Ready(ctx, nil)
		_, err := f.Struct()
		rel()
		if err != nil {
			return fmt.Errorf("ready: %w", err)
		}
	}
	if *exitCode >= 0 {
		event("exit")
		os.Exit(*exitCode)
	}
	for range terms {
		event("sigterm")
		if !*ignoreTerm {
			if *termExit != 0 {
				os.Exit(*termExit)
			}
			return nil
		}
	}
	return nil
}

func event(what string) {
	if *logPath == "" {
		return
	}
	f, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testchild log:", err)
		os.Exit(3)
	}
	f.WriteString(what + " " + *name + "\n")
	f.Close()
}

func whoami(ctx context.Context, sess oomdpb.Session) (Whoami, error) {
	f, rel := sess.Whoami(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return Whoami{}, fmt.Errorf("whoami: %w", err)
	}
	subject, _ := res.Subject()
	return Whoami{Subject: subject, Instance: res.Instance(), Critical: res.Critical()}, nil
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// listFds writes "fd target inherited" lines for every open fd except the directory
// handle used to list them. inherited is true when the fd lacks O_CLOEXEC: this
// program's own fds (the Go runtime opens some at start-up) all have it, so those
// without it came through exec from execd.
func listFds(path string) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testchild fds:", err)
		os.Exit(3)
	}
	self := "/proc/" + strconv.Itoa(os.Getpid()) + "/fd"
	var lines []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || target == self {
			continue // the listing's own fd, already closed
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue
		}
		inherited := true
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				flags, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
				inherited = flags&syscall.O_CLOEXEC == 0
			}
		}
		lines = append(lines, fmt.Sprintf("%s %s %t", e.Name(), target, inherited))
	}
	sort.Strings(lines)
	b, _ := json.Marshal(lines)
	if err := writeAtomic(path, b); err != nil {
		fmt.Fprintln(os.Stderr, "testchild fds:", err)
		os.Exit(3)
	}
}

var keepAlive *os.File

// startGrandchild starts a process that blocks on a pipe we hold, so it is still alive
// when we exit and is re-parented to execd (the subreaper), then exits on EOF.
func startGrandchild(pidPath string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "--grandchild")
	cmd.ExtraFiles = []*os.File{r}
	if err := cmd.Start(); err != nil {
		return err
	}
	r.Close()
	keepAlive = w // the write end stays open (no finalizer close) until we exit
	return writeAtomic(pidPath, []byte(strconv.Itoa(cmd.Process.Pid)))
}

// proxy exposes the watchdog's grants to the test: the test listens on --proxy-term and
// --proxy-system (stream) and --proxy-handoffs (seqpacket); we dial them. A call the
// test makes on the SystemControl reaches execd from the watchdog's own connection.
func proxy(ctx context.Context, sess oomdpb.Session) (func(), error) {
	f, rel := sess.Grants(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return nil, fmt.Errorf("grants: %w", err)
	}
	term := res.Terminator().AddRef()
	tc, err := net.DialTimeout("unix", *proxyTerm, 10*time.Second)
	if err != nil {
		term.Release()
		return nil, fmt.Errorf("dial %s: %w", *proxyTerm, err)
	}
	conns := []*rpc.Conn{rpcx.NewConn(tc, capnp.Client(term), nil)}
	if *proxySystem != "" {
		system := res.System().AddRef()
		sc, err := net.DialTimeout("unix", *proxySystem, 10*time.Second)
		if err != nil {
			system.Release()
			return nil, fmt.Errorf("dial %s: %w", *proxySystem, err)
		}
		conns = append(conns, rpcx.NewConn(sc, capnp.Client(system), nil))
	}

	broker, err := rpcx.InheritedConn(rpcx.EnvBrokerFD)
	if err != nil {
		return nil, err
	}
	hc, err := net.DialTimeout("unixpacket", *proxyHand, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", *proxyHand, err)
	}
	go func() {
		for {
			msg, files, err := rpcx.RecvMsgFDs(broker.(*net.UnixConn))
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					fmt.Fprintln(os.Stderr, "testchild broker:", err)
				}
				return
			}
			if err := rpcx.SendMsgFDs(hc.(*net.UnixConn), msg, files...); err != nil {
				fmt.Fprintln(os.Stderr, "testchild forward:", err)
			}
			for _, f := range files {
				f.Close()
			}
		}
	}()
	return func() {
		for _, c := range conns {
			closeConn(c)
		}
		broker.Close()
		hc.Close()
	}, nil
}

func closeConn(c *rpc.Conn) {
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// answerMemstat serves every connection execd delivers (one per watchdog instance): each
// byte read is answered with 'x'. Reading first lets the peer turn on SO_PASSCRED before
// the reply.
func answerMemstat(d *net.UnixConn) {
	for {
		c, err := rpcx.ReceiveConn(d)
		if err != nil {
			return
		}
		event("memstat-connection")
		go func() {
			defer c.Close()
			b := make([]byte, 1)
			for {
				if _, err := c.Read(b); err != nil {
					return
				}
				if _, err := c.Write([]byte{'x'}); err != nil {
					return
				}
			}
		}()
	}
}

// rebootWatcher answers RebootWatcher.rebooting as --reboot-watcher and --reboot-gate say,
// logging "rebooting:<reason>" first.
type rebootWatcher struct{}

func (rebootWatcher) Rebooting(ctx context.Context, call oomdpb.RebootWatcher_rebooting) error {
	event("rebooting:" + call.Args().Reason().String())
	if *rebootWatch == "hang" {
		<-ctx.Done() // never answers; execd gives up on us
		return ctx.Err()
	}
	if *rebootGate != "" {
		call.Go()
		f, err := os.Open(*rebootGate)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Read(make([]byte, 1)); err != nil {
			return fmt.Errorf("reboot gate: %w", err)
		}
	}
	event("rebooting-answered")
	return nil
}

// watchReboot registers the watcher through the session and logs "watching" once execd
// accepted it.
func watchReboot(ctx context.Context, sess oomdpb.Session) error {
	if *rebootWatch != "answer" && *rebootWatch != "hang" {
		return fmt.Errorf("--reboot-watcher %q: want answer or hang", *rebootWatch)
	}
	f, rel := sess.WatchReboot(ctx, func(p oomdpb.Session_watchReboot_Params) error {
		return p.SetWatcher(oomdpb.RebootWatcher_ServerToClient(rebootWatcher{}))
	})
	defer rel()
	if _, err := f.Struct(); err != nil {
		return fmt.Errorf("watchReboot: %w", err)
	}
	event("watching")
	return nil
}
