package wire

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"unicode"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/schemas"
	"capnproto.org/go/capnp/v3/std/capnp/schema"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

// filled returns a T with every field set, recursively, to a value that is not zero and
// that no other field has (lists get two entries), so a field that an encoder or a
// decoder forgets comes back different. Enumerants get values no schema enum has yet,
// which the wire must pass on as they are.
func filled[T any](t *testing.T) T {
	var v T
	n := 0
	var fill func(reflect.Value)
	fill = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				fill(v.Field(i))
			}
		case reflect.Slice:
			s := reflect.MakeSlice(v.Type(), 2, 2)
			for i := 0; i < s.Len(); i++ {
				fill(s.Index(i))
			}
			v.Set(s)
		case reflect.String:
			n++
			v.SetString(fmt.Sprintf("s%d", n))
		case reflect.Bool:
			v.SetBool(true)
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			n++
			v.SetUint(uint64(n))
		case reflect.Int64:
			n++
			v.SetInt(int64(n))
		default:
			t.Fatalf("filled: no value for a %s (%s): teach fill about it", v.Kind(), v.Type())
		}
	}
	fill(reflect.ValueOf(&v).Elem())
	return v
}

// roundTrip sends v the way a peer does: set writes it into a new message's root,
// the message goes to bytes and back, and read takes it out again.
func roundTrip[S, T any](t *testing.T, newRoot func(*capnp.Segment) (S, error), readRoot func(*capnp.Message) (S, error),
	set func(S, T) error, read func(S) (T, error), v T) T {
	t.Helper()
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	dst, err := newRoot(seg)
	require.NoError(t, err)
	require.NoError(t, set(dst, v))
	b, err := msg.Marshal()
	require.NoError(t, err)
	back, err := capnp.Unmarshal(b)
	require.NoError(t, err)
	src, err := readRoot(back)
	require.NoError(t, err)
	got, err := read(src)
	require.NoError(t, err)
	return got
}

func TestStatusRoundTrip(t *testing.T) {
	want := filled[Status](t)
	assert.Equal(t, want, roundTrip(t, oomdpb.NewRootStatus, oomdpb.ReadRootStatus, SetStatus, ReadStatus, want))
}

func TestRebootRecordRoundTrip(t *testing.T) {
	want := filled[RebootRecord](t)
	assert.Equal(t, want, roundTrip(t, oomdpb.NewRootRebootRecord, oomdpb.ReadRootRebootRecord, SetRebootRecord, ReadRebootRecord, want))
	// None: what oomd sends when it has no record.
	assert.Equal(t, RebootRecord{}, roundTrip(t, oomdpb.NewRootRebootRecord, oomdpb.ReadRootRebootRecord, SetRebootRecord, ReadRebootRecord, RebootRecord{}))
}

func TestJournalEntriesRoundTrip(t *testing.T) {
	set := func(dst oomdpb.Control_audit_Results, es []JournalEntry) error {
		l, err := dst.NewEntries(int32(len(es)))
		if err != nil {
			return err
		}
		for i, e := range es {
			if err := SetJournalEntry(l.At(i), e); err != nil {
				return err
			}
		}
		return nil
	}
	read := func(src oomdpb.Control_audit_Results) ([]JournalEntry, error) {
		l, err := src.Entries()
		if err != nil {
			return nil, err
		}
		return ReadJournalEntries(l)
	}
	want := filled[[]JournalEntry](t)
	assert.Equal(t, want, roundTrip(t, oomdpb.NewRootControl_audit_Results, oomdpb.ReadRootControl_audit_Results, set, read, want))
}

// TestEventBatchRoundTrip: every field of every event, and the missed count, through
// both places a batch travels.
func TestEventBatchRoundTrip(t *testing.T) {
	want := eventBatch{filled[[]policy.Event](t), 7}
	assert.Equal(t, want, batchRoundTrip(t, oomdpb.NewRootEventSubscriber_push_Params, oomdpb.ReadRootEventSubscriber_push_Params, want), "push")
	assert.Equal(t, want, batchRoundTrip(t, oomdpb.NewRootControl_events_Results, oomdpb.ReadRootControl_events_Results, want), "events")
}

type eventBatch struct {
	evs    []policy.Event
	missed uint64
}

func batchRoundTrip[S interface {
	EventBatchDst
	EventBatchSrc
}](t *testing.T, newRoot func(*capnp.Segment) (S, error), readRoot func(*capnp.Message) (S, error), b eventBatch) eventBatch {
	set := func(dst S, b eventBatch) error { return SetEventBatch(dst, b.evs, b.missed) }
	read := func(src S) (b eventBatch, err error) {
		b.evs, b.missed, err = ReadEventBatch(src)
		return b, err
	}
	return roundTrip(t, newRoot, readRoot, set, read, b)
}

// TestPlainTypesCoverTheSchema is the field-count guard: each plain type has one field
// per field of its schema struct, by name, apart from those listed as carried beside
// it. A field added to either side fails here until the other has it; the round trips
// above then fail until SetX and ReadX carry it.
func TestPlainTypesCoverTheSchema(t *testing.T) {
	for _, c := range []struct {
		typ    reflect.Type
		id     uint64
		beside []string // schema fields the plain type does not hold, and why
	}{
		{reflect.TypeFor[Status](), oomdpb.Status_TypeID, nil},
		{reflect.TypeFor[SubjectStatus](), oomdpb.SubjectStatus_TypeID, nil},
		{reflect.TypeFor[RebootRecord](), oomdpb.RebootRecord_TypeID, nil},
		{reflect.TypeFor[JournalEntry](), oomdpb.JournalEntry_TypeID, nil},
		{reflect.TypeFor[policy.Event](), oomdpb.Event_TypeID, nil},
		// The shell stamps execdRun (SetAuditRecord's argument); the core does not know it.
		{reflect.TypeFor[policy.AuditRecord](), oomdpb.AuditRecord_TypeID, []string{"execdRun"}},
	} {
		var goFields []string
		for i := 0; i < c.typ.NumField(); i++ {
			name := []rune(c.typ.Field(i).Name)
			name[0] = unicode.ToLower(name[0])
			goFields = append(goFields, string(name))
		}
		want := schemaFields(t, c.id)
		for _, b := range c.beside {
			assert.Contains(t, want, b, "%s: %s is listed as carried beside it but the schema has no such field", c.typ, b)
		}
		want = slices.DeleteFunc(want, func(f string) bool { return slices.Contains(c.beside, f) })
		assert.ElementsMatch(t, want, goFields, "%s does not match its schema struct field for field: "+
			"add the field to the plain type and to its SetX and ReadX (or, if it travels beside it, to beside)", c.typ)
	}
}

// schemaFields returns the field names of the schema struct id, from the schema
// capnpc-go embedded in gen/oomdpb.
func schemaFields(t *testing.T, id uint64) []string {
	t.Helper()
	var reg schemas.Registry
	oomdpb.RegisterSchema(&reg)
	raw, err := reg.Find(id)
	require.NoError(t, err)
	msg, err := capnp.Unmarshal(raw)
	require.NoError(t, err)
	req, err := schema.ReadRootCodeGeneratorRequest(msg)
	require.NoError(t, err)
	nodes, err := req.Nodes()
	require.NoError(t, err)
	for i := 0; i < nodes.Len(); i++ {
		n := nodes.At(i)
		if n.Id() != id {
			continue
		}
		fs, err := n.StructNode().Fields()
		require.NoError(t, err)
		var names []string
		for j := 0; j < fs.Len(); j++ {
			name, err := fs.At(j).Name()
			require.NoError(t, err)
			names = append(names, name)
		}
		return names
	}
	t.Fatalf("schema node %#x not found", id)
	return nil
}
