package guards

import (
	"testing"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// TestDerivedShapes pins what schema/oomd.capnp yields per socket. A schema change that
// moves one of these is meant to be reviewed here.
func TestDerivedShapes(t *testing.T) {
	caps := func(g *rpcx.Guard, iface uint64) []int {
		var out []int
		for _, m := range g.Methods[iface] {
			out = append(out, m.Caps)
		}
		return out
	}
	tests := []struct {
		name       string
		g          *rpcx.Guard
		ifaces     map[uint64][]int // cap table bound per method ordinal
		promises   bool             // promise caps and Resolve
		ret        bool
		returnCaps int
		transform  int
	}{
		{"control", Control, map[uint64][]int{
			oomdpb.Control_TypeID:      {0, 0, 0, 1, 0, 0, 0, 1, 0, 0}, // subscribe, watchLevels take a capability
			oomdpb.Subscription_TypeID: nil,                            // a handle: no methods
		}, true, true, 0, 1},
		{"logd", Journal, map[uint64][]int{
			oomdpb.Journal_TypeID:  {0, 0, 0},
			oomdpb.Appender_TypeID: {0, 0},
		}, false, false, 0, 1},
		{"session", Session, map[uint64][]int{
			oomdpb.Session_TypeID:       {0, 0, 0, 1},
			oomdpb.Terminator_TypeID:    {0, 1},
			oomdpb.SystemControl_TypeID: {0, 1},
		}, true, true, 0, 1},
		{"memstat", Publisher, map[uint64][]int{
			oomdpb.MemstatSink_TypeID: {0},
		}, false, true, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := tt.g
			require.Equal(t, tt.name, g.Name)
			require.Len(t, g.Methods, len(tt.ifaces))
			for id, want := range tt.ifaces {
				require.Contains(t, g.Methods, id)
				require.Equal(t, want, caps(g, id), "interface %#x", id)
			}
			require.Equal(t, tt.promises, g.AllowPromiseCaps, "promise caps")
			require.Equal(t, tt.promises, g.AllowResolve, "resolve")
			require.False(t, g.AllowDisembargo, "no oomd server sends what a Disembargo answers")
			require.Equal(t, tt.ret, g.AllowReturn, "return")
			require.Equal(t, tt.returnCaps, g.ReturnCaps, "return caps")
			require.Equal(t, tt.transform, g.MaxTransformOps, "transform")
		})
	}
}
