package rpcx

import (
	"errors"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/std/capnp/schema"
)

// Socket names what one side of a connection serves and calls, for DeriveGuard.
type Socket struct {
	Name string
	// Serves is the interface id of this side's bootstrap capability.
	Serves uint64
	// PeerBootstrap is the interface id of the peer's bootstrap that this side asks
	// for (0: this side never bootstraps the peer).
	PeerBootstrap uint64
}

// unboundedCaps stands for a field that can carry any number of capabilities (a list
// of interfaces, an AnyPointer); DeriveGuard then allows MaxCapsPerUnbounded.
const unboundedCaps = -1

// MaxCapsPerUnbounded is the cap table bound DeriveGuard gives a method whose params
// can carry any number of capabilities. No method of schema/oomd.capnp has one.
const MaxCapsPerUnbounded = 16

// streamResultID is capnp/stream.capnp's StreamResult, the (empty) results of every
// "-> stream" method; generated code does not register that file's nodes.
const streamResultID = 0x995f9a3377c0b16e

// ErrSchema means the schema given to DeriveGuard lacks a node it needs.
var ErrSchema = errors.New("guard schema")

// Schema is a set of schema nodes by id (from a generated package's RegisterSchema).
type Schema map[uint64]schema.Node

// LoadSchema reads the CodeGeneratorRequest that generated code registers (see
// schemas.Registry.Find).
func LoadSchema(data []byte) (Schema, error) {
	msg, err := capnp.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSchema, err)
	}
	req, err := schema.ReadRootCodeGeneratorRequest(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSchema, err)
	}
	nodes, err := req.Nodes()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSchema, err)
	}
	s := make(Schema, nodes.Len())
	for i := range nodes.Len() {
		s[nodes.At(i).Id()] = nodes.At(i)
	}
	return s, nil
}

// DeriveGuard computes a socket's Guard from the schema:
//   - Methods: the bootstrap interface, and every interface whose capabilities appear
//     in the results of a served method (transitively), or in the params of a method
//     this side calls on the peer; each method's cap table bound is the number of
//     capability fields its params struct can hold.
//   - AllowReturn/ReturnCaps: this side calls the peer when a served method takes a
//     capability or when it bootstraps the peer; a Return then carries at most the
//     capabilities of the called method's results (one for a bootstrap).
//   - AllowPromiseCaps, AllowResolve: only where a served method takes a capability.
//   - MaxTransformOps: the deepest capability field in a served method's results.
//
// The other bounds take the package defaults.
func DeriveGuard(s Schema, sock Socket) (*Guard, error) {
	d := deriver{s: s, served: map[uint64]bool{}, peer: map[uint64]bool{}}
	g := &Guard{
		Name:              sock.Name,
		Methods:           map[uint64][]Method{},
		MaxTraversalWords: DefaultGuardTraversalWords,
		MaxDepth:          DefaultGuardDepth,
		MaxQuestions:      DefaultMaxQuestions,
		MaxImports:        DefaultMaxImports,
	}
	type item struct {
		id     uint64
		served bool // served by this side; else hosted by the peer
	}
	d.served[sock.Serves] = true
	work := []item{{sock.Serves, true}}
	if sock.PeerBootstrap != 0 {
		d.peer[sock.PeerBootstrap] = true
		work = append(work, item{sock.PeerBootstrap, false})
		g.AllowReturn, g.ReturnCaps = true, 1
	}
	push := func(set map[uint64]bool, served bool, ids []uint64) {
		for _, id := range ids {
			if !set[id] {
				set[id] = true
				work = append(work, item{id, served})
			}
		}
	}
	for len(work) > 0 {
		it := work[0]
		work = work[1:]
		ms, supers, err := d.methods(it.id)
		if err != nil {
			return nil, err
		}
		if it.served {
			push(d.served, true, supers)
			if g.Methods[it.id] == nil {
				g.Methods[it.id] = []Method{} // served, perhaps without methods (a handle)
			}
		} else {
			push(d.peer, false, supers)
		}
		for _, m := range ms {
			params, err := d.caps(m.params, 0, nil)
			if err != nil {
				return nil, err
			}
			res, err := d.caps(m.results, 0, nil)
			if err != nil {
				return nil, err
			}
			// This side receives the params of a served method and the results of a
			// peer's; capabilities in what it receives are the peer's, in what it sends
			// its own.
			if it.served {
				g.Methods[it.id] = append(g.Methods[it.id], Method{Name: m.name, Caps: bound(params.n)})
				if params.n != 0 {
					g.AllowPromiseCaps, g.AllowResolve, g.AllowReturn = true, true, true
				}
				g.MaxTransformOps = max(g.MaxTransformOps, res.depth)
				push(d.peer, false, params.ifaces)
				push(d.served, true, res.ifaces)
			} else {
				g.ReturnCaps = max(g.ReturnCaps, bound(res.n))
				push(d.peer, false, res.ifaces)
				push(d.served, true, params.ifaces)
			}
		}
	}
	return g, nil
}

func bound(n int) int {
	if n == unboundedCaps {
		return MaxCapsPerUnbounded
	}
	return n
}

type deriver struct {
	s            Schema
	served, peer map[uint64]bool
}

type method struct {
	name            string
	params, results uint64
}

// methods lists an interface's methods by ordinal, and its superclasses (whose methods
// are called under their own ids).
func (d *deriver) methods(id uint64) ([]method, []uint64, error) {
	n, ok := d.s[id]
	if !ok || n.Which() != schema.Node_Which_interface {
		return nil, nil, fmt.Errorf("%w: interface %#x not found", ErrSchema, id)
	}
	display, _ := n.DisplayName()
	short := display[min(int(n.DisplayNamePrefixLength()), len(display)):]
	iface := n.Interface()
	var supers []uint64
	if sup, err := iface.Superclasses(); err == nil {
		for i := range sup.Len() {
			supers = append(supers, sup.At(i).Id())
		}
	}
	ml, err := iface.Methods()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrSchema, err)
	}
	out := make([]method, ml.Len())
	for i := range ml.Len() {
		m := ml.At(i)
		name, _ := m.Name()
		out[i] = method{name: short + "." + name, params: m.ParamStructType(), results: m.ResultStructType()}
	}
	return out, supers, nil
}

// capShape is what a struct can carry: the number of capabilities (unboundedCaps if
// any number), their interfaces, and the depth (pointer fields to follow from the
// struct) of the deepest one reachable by a promised-answer transform.
type capShape struct {
	n      int
	ifaces []uint64
	depth  int
}

func (c *capShape) addN(k int) {
	if c.n == unboundedCaps || k == unboundedCaps {
		c.n = unboundedCaps
		return
	}
	c.n += k
}

// caps walks struct id. depth is the transform length to reach it; seen breaks cycles
// (a recursive struct can hold any number of capabilities).
func (d *deriver) caps(id uint64, depth int, seen map[uint64]bool) (capShape, error) {
	var out capShape
	if id == streamResultID {
		return out, nil
	}
	n, ok := d.s[id]
	if !ok || n.Which() != schema.Node_Which_structNode {
		return out, fmt.Errorf("%w: struct %#x not found", ErrSchema, id)
	}
	if seen[id] {
		return capShape{n: unboundedCaps}, nil
	}
	if seen == nil {
		seen = map[uint64]bool{}
	}
	seen[id] = true
	defer delete(seen, id)
	fields, err := n.StructNode().Fields()
	if err != nil {
		return out, fmt.Errorf("%w: %v", ErrSchema, err)
	}
	for i := range fields.Len() {
		f := fields.At(i)
		if f.Which() == schema.Field_Which_group {
			// A group's fields live in its parent's sections: same depth.
			sub, err := d.caps(f.Group().TypeId(), depth, seen)
			if err != nil {
				return out, err
			}
			out.merge(sub)
			continue
		}
		t, err := f.Slot().Type()
		if err != nil {
			return out, fmt.Errorf("%w: %v", ErrSchema, err)
		}
		if err := d.typeCaps(t, depth+1, seen, &out, true); err != nil {
			return out, err
		}
	}
	return out, nil
}

func (c *capShape) merge(sub capShape) {
	c.addN(sub.n)
	c.ifaces = append(c.ifaces, sub.ifaces...)
	c.depth = max(c.depth, sub.depth)
}

// typeCaps adds what a field of type t can carry. direct: the field is reachable by a
// transform (not inside a list).
func (d *deriver) typeCaps(t schema.Type, depth int, seen map[uint64]bool, out *capShape, direct bool) error {
	switch t.Which() {
	case schema.Type_Which_interface:
		out.addN(1)
		out.ifaces = append(out.ifaces, t.Interface().TypeId())
		if direct {
			out.depth = max(out.depth, depth)
		}
	case schema.Type_Which_structType:
		sub, err := d.caps(t.StructType().TypeId(), depth, seen)
		if err != nil {
			return err
		}
		if !direct {
			sub.depth = 0
		}
		out.merge(sub)
	case schema.Type_Which_list:
		et, err := t.List().ElementType()
		if err != nil {
			return fmt.Errorf("%w: %v", ErrSchema, err)
		}
		var elem capShape
		if err := d.typeCaps(et, depth, seen, &elem, false); err != nil {
			return err
		}
		if elem.n != 0 {
			out.addN(unboundedCaps)
			out.ifaces = append(out.ifaces, elem.ifaces...)
		}
	case schema.Type_Which_anyPointer:
		out.addN(unboundedCaps)
	}
	return nil
}
