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

func newSeg(t *testing.T) *capnp.Segment {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	require.NoError(t, err)
	return seg
}

func TestStatusRoundTrip(t *testing.T) {
	want := filled[Status](t)
	dst, err := oomdpb.NewRootStatus(newSeg(t))
	require.NoError(t, err)
	require.NoError(t, SetStatus(dst, want))
	got, err := ReadStatus(dst)
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestRebootRecordRoundTrip(t *testing.T) {
	want := filled[RebootRecord](t)
	dst, err := oomdpb.NewRootRebootRecord(newSeg(t))
	require.NoError(t, err)
	require.NoError(t, SetRebootRecord(dst, want))
	got, err := ReadRebootRecord(dst)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	// None: what oomd sends when it has no record.
	dst, err = oomdpb.NewRootRebootRecord(newSeg(t))
	require.NoError(t, err)
	require.NoError(t, SetRebootRecord(dst, RebootRecord{}))
	got, err = ReadRebootRecord(dst)
	require.NoError(t, err)
	assert.Equal(t, RebootRecord{Reason: oomdpb.RebootReason_unknown}, got)
}

func TestJournalEntriesRoundTrip(t *testing.T) {
	want := filled[[]JournalEntry](t)
	l, err := oomdpb.NewJournalEntry_List(newSeg(t), int32(len(want)))
	require.NoError(t, err)
	for i, e := range want {
		require.NoError(t, SetJournalEntry(l.At(i), e))
	}
	got, err := ReadJournalEntries(l)
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestEventsRoundTripEveryField(t *testing.T) {
	want := filled[[]policy.Event](t)
	l, err := NewEventList(newSeg(t), want)
	require.NoError(t, err)
	got, err := Events(l)
	require.NoError(t, err)
	assert.Equal(t, want, got)
}

func TestEventBatchRoundTrip(t *testing.T) {
	want := filled[[]policy.Event](t)
	push, err := oomdpb.NewRootEventSubscriber_push_Params(newSeg(t))
	require.NoError(t, err)
	res, err := oomdpb.NewRootControl_events_Results(newSeg(t))
	require.NoError(t, err)
	for _, b := range []interface {
		EventBatchDst
		EventBatchSrc
	}{push, res} {
		require.NoError(t, SetEventBatch(b, want, 7))
		got, missed, err := ReadEventBatch(b)
		require.NoError(t, err)
		assert.Equal(t, want, got)
		assert.Equal(t, uint64(7), missed)
	}
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
