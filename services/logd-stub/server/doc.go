// Package server serves logd's journal over Cap'n Proto: the Journal and Appender
// interfaces of schema/oomd.capnp on top of package journal, and Run, which is the whole
// logd daemon (open the journal, listen, tell execd it is ready, serve until stopped).
//
// Every connection gets its own Journal object (rpcx.Server), and every Journal.open its
// own Appender bound to the writer name. A peer's bad input fails only its own call: a
// rejected append (a field out of bounds, a writerSeq gap) breaks that Appender, and
// every later append or sync on it fails with the same error; the writer opens again,
// learns lastWriterSeq and resends from there (duplicates are dropped). One record may
// skip writerSeqs: a lost-record placeholder (package lostrec: kind auditSpilled, no
// subject, decision 0, reason "lost: ..."), by which a writer declares the skipped
// writerSeqs lost. That is how a writer reconciles once with a journal that lost its
// tail or was restored from a backup; logd logs it at ERROR with the range.
//
// # Protocol, as a writer sees it
//
//	conn, c, err := rpcx.Dial(ctx, "/run/oomd/logd.sock", log)
//	journal := oomdpb.Journal(c)
//	f, release := journal.Open(ctx, func(p oomdpb.Journal_open_Params) error { return p.SetWriter("oomd") })
//	res, err := f.Struct()
//	app := res.Appender().AddRef()          // keep it beyond release()
//	app.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))
//	last := res.LastWriterSeq()             // durable already; continue at last+1
//
//	app.Append(ctx, ...)                    // writerSeq last+1, last+2, ... (a stream)
//	s, rel := app.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(n); return nil })
//	r, err := s.Struct()                    // returns once 1..n are fsync'ed:
//	                                        // r.DurableWriterSeq() >= n is the audit ack
//
// sync(upTo) fails when upTo is above the last writerSeq this writer appended, so an ack
// never covers a record logd does not have. Reads (Journal.read) serve only fsync'ed
// records, at most 1024 and about half a MiB per call; missed counts records rotated
// away before the reader got to them.
package server
