package tracelog

import (
	"strconv"

	"oomd.dev/oomd/services/oomd/policy"
)

// appendInputRecord appends Record{Input: in} as encoding/json writes it, byte for byte,
// without reflection or allocation: the live trace records every input the core steps,
// and json.Marshal was most of an idle oomd's own CPU (docs/perf.md). ok is false for
// an input it does not write itself (a policy, a kind or preference without a name, a
// string that needs escaping): the caller then uses json.Marshal. TestAppendInputRecord
// holds the two to the same bytes.
func appendInputRecord(b []byte, in *policy.Input) (_ []byte, ok bool) {
	if in.Policy != nil {
		return b, false
	}
	kind := in.Kind.String() // what MarshalText writes, without its allocation
	if kind == "unknown" {
		return b, false // MarshalText refuses it
	}
	b = append(b, `{"input":{"kind":"`...)
	b = append(b, kind...)
	b = append(b, '"')
	if b, ok = appendStr(b, "subject", in.Subject); !ok {
		return b, false
	}
	b = appendUint(b, "instance", in.Instance)
	if b, ok = appendStr(b, "claimed", in.Claimed); !ok {
		return b, false
	}
	b = appendUint(b, "bytes", in.Bytes)
	b = appendBool(b, "critical", in.Critical)
	if in.Preference != policy.PreferenceNone {
		pref := in.Preference.String()
		if pref == "unknown" {
			return b, false
		}
		b = append(b, `,"preference":"`...)
		b = append(b, pref...)
		b = append(b, '"')
	}
	b = appendUint(b, "seq", in.Seq)
	b = appendUint(b, "decision", in.Decision)
	if b, ok = appendStr(b, "reason", in.Reason); !ok {
		return b, false
	}
	b = appendUint(b, "count", in.Count)
	b = appendUint(b, "pressure", uint64(in.Pressure))
	b = appendUint(b, "slot", uint64(in.Slot))
	b = appendBool(b, "graceful", in.Graceful)
	if len(in.NotStopped) > 0 {
		b = append(b, `,"notStopped":[`...)
		for i, s := range in.NotStopped {
			if i > 0 {
				b = append(b, ',')
			}
			if !plain(s) {
				return b, false
			}
			b = append(b, '"')
			b = append(b, s...)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	return append(b, "}}"...), true
}

func appendUint(b []byte, name string, v uint64) []byte {
	if v == 0 {
		return b // omitempty
	}
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":`...)
	return strconv.AppendUint(b, v, 10)
}

func appendBool(b []byte, name string, v bool) []byte {
	if !v {
		return b
	}
	b = append(b, `,"`...)
	b = append(b, name...)
	return append(b, `":true`...)
}

func appendStr(b []byte, name, v string) ([]byte, bool) {
	if v == "" {
		return b, true
	}
	if !plain(v) {
		return b, false
	}
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":"`...)
	b = append(b, v...)
	return append(b, '"'), true
}

// plain reports whether encoding/json writes s as it is between quotes: printable ASCII
// without the characters it escapes (quote, backslash, and <, >, & as HTML-safe).
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}
