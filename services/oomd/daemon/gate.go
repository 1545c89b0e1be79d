package daemon

import "net"

// gatedConn holds back reads until open is closed. A brokered memstat connection is
// served through it so that nothing the subject sends is taken in before the subject is
// registered with the core: a sample that arrived earlier would be dropped as coming
// from an unknown subject, and a publisher re-publishing its unchanged latest value to a
// restarted oomd sends it only once.
type gatedConn struct {
	net.Conn
	open <-chan struct{}
}

func (g gatedConn) Read(p []byte) (int, error) {
	<-g.open
	return g.Conn.Read(p)
}
