// Package cli is oomctl: command parsing, the calls to oomd's control API, and the
// output in both forms (aligned text for people, one JSON object per line for scripts).
//
// It uses the standard flag package, one flag.FlagSet per command, rather than cobra: five
// commands and a dozen flags fit a small dispatch table, and flag keeps every binary in
// this module on one flag syntax and keeps a CLI framework out of the watchdog's module
// graph. What cobra adds (shell completion, generated nested help, suggestions) does not
// pay for itself at this size, and the one thing flag lacks here, global flags on either
// side of the command, takes a few lines: they are registered on every FlagSet.
//
// # JSON output
//
// With --json every command prints one JSON object per line. Field names are the
// schema's (schema/oomd.capnp) and are oomctl's interface to scripts: fields may be
// added, never renamed or removed. Every field is always present, except inside
// "policy", which is the policy file format (it leaves out empty lists and zero optional
// fields). Enumerants are printed by name; one this oomctl does not know prints as
// "unknown(<n>)".
//
//	status      {"tick","policyVersion","lastEventSeq","kills","denied","throttled",
//	             "acceptedSamples","rejectedSamples","level","memAvailableBytes",
//	             "haltClaimed","injectEnabled","truncated","subjects":[{"subject",
//	             "instance","state","bytes","softBytes","hardBytes","critical","rejected",
//	             ...}], ..., "auditWaiting","auditLogdDown","auditSpilled"}
//	policy get  {"version","policy":{...}} where "policy" is a policy file as
//	             `policy set --file` (and oomd --policy) read it
//	policy set  {"version"}
//	events      {"seq","tick","kind","subject","bytes","limit","decision","reason"}
//	audit       {"seq","writer","writerSeq","tick","kind","subject","instance","bytes",
//	             "limit","decision","reason"}
//
// events and audit print {"missed":<n>} in stream order where entries were lost (oomd's
// ring overwrote them, or logd rotated them away); it has no "seq", which is how a
// script tells it apart.
//
// Example, waiting in a script for the next kill of "db":
//
//	since=$(oomctl status --json | jq .lastEventSeq)
//	oomctl events --follow --json --since "$since" |
//	  jq -c --unbuffered 'select(.kind == "killed" and .subject == "db")' | head -n 1
package cli
