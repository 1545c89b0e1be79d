// Command sessionleak is a test subject that hands its execd session socket (fd 3,
// OOMD_SESSION_FD) to the test over a Unix socket, so the test can speak the wire format
// to execd as a hostile subject would, then waits for SIGTERM.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	to := flag.String("to", "", "Unix socket to send the session fd to")
	flag.Parse()
	fd, err := strconv.Atoi(os.Getenv("OOMD_SESSION_FD"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sessionleak: no OOMD_SESSION_FD")
		os.Exit(2)
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: *to, Net: "unix"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sessionleak:", err)
		os.Exit(2)
	}
	if _, _, err := c.WriteMsgUnix([]byte{'s'}, unix.UnixRights(fd), nil); err != nil {
		fmt.Fprintln(os.Stderr, "sessionleak:", err)
		os.Exit(2)
	}
	c.Close()
	unix.Close(fd) // only the test holds the session now
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
