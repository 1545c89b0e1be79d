// Package guards declares the protocol guard (rpcx.Guard) of every Cap'n Proto socket
// oomd's daemons serve. Each is derived from schema/oomd.capnp by rpcx.DeriveGuard at
// start-up, so a method added to the schema is admitted without editing a list here,
// and a shape no method can use (a capability promise where no method takes one, a cap
// table longer than a method's capability fields) is refused.
//
// guards_test.go pins what the derivation yields for each socket; a schema change that
// alters it shows up there as a diff to review.
package guards

import (
	"fmt"

	"capnproto.org/go/capnp/v3/schemas"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// The sockets, by the interface their bootstrap serves.
var (
	// Control is oomd's control socket (Control; Subscription handles in results;
	// EventSubscriber and LevelWatcher are the peer's, called back by oomd).
	Control = derive(rpcx.Socket{Name: "control", Serves: oomdpb.Control_TypeID})
	// Journal is logd's socket (Journal; Appender in results).
	Journal = derive(rpcx.Socket{Name: "logd", Serves: oomdpb.Journal_TypeID})
	// Session is a child's connection to execd (Session; Terminator and SystemControl
	// in results; ExitWatcher and RebootWatcher are the child's, called back by execd).
	Session = derive(rpcx.Socket{Name: "session", Serves: oomdpb.Session_TypeID})
	// Publisher is oomd's side of a brokered subject connection (MemstatSink; the
	// subject's bootstrap is its TestHook, which oomd calls for inject).
	Publisher = derive(rpcx.Socket{Name: "memstat", Serves: oomdpb.MemstatSink_TypeID, PeerBootstrap: oomdpb.TestHook_TypeID})
)

var oomdSchema = func() rpcx.Schema {
	var reg schemas.Registry
	oomdpb.RegisterSchema(&reg)
	data, err := reg.Find(oomdpb.Control_TypeID)
	if err != nil {
		panic(fmt.Sprintf("guards: oomd schema: %v", err))
	}
	s, err := rpcx.LoadSchema(data)
	if err != nil {
		panic(fmt.Sprintf("guards: oomd schema: %v", err))
	}
	return s
}()

// derive panics: the schema is compiled in, so a failure is a build defect that every
// test of a daemon catches at package initialisation.
func derive(s rpcx.Socket) *rpcx.Guard {
	g, err := rpcx.DeriveGuard(oomdSchema, s)
	if err != nil {
		panic(fmt.Sprintf("guards: %s: %v", s.Name, err))
	}
	return g
}
