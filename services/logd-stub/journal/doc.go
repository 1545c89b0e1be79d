// Package journal is logd's durable, append-only, bounded audit store.
//
// A Journal assigns every appended record the next journal sequence number (1, 2, 3, ...,
// continuing across restarts) and keeps, per writer, the highest writerSeq it holds, so a
// writer that restarts can ask what is already there and resend only the rest. Append
// writes; Sync (or SyncWriter) fsyncs. A record counts as durable only once an fsync that
// covers it has returned, and Read serves durable records only, so a sequence number a
// reader has seen always names the same record, even after a crash.
//
// Concurrent Sync calls are group-committed: while one fsync runs, later callers wait for
// it and then one of them issues a single fsync covering everything written meanwhile.
//
// # Bounds
//
// Disk: at most Options.MaxSegments segment files of at most Options.MaxSegmentBytes
// each (defaults 8 × 4 MiB = 32 MiB). When the active segment cannot take the next
// record it is fsync'ed and sealed and a new one is started; when that makes more than
// MaxSegments, the oldest segment is deleted and its records are reported to readers as
// missed. Memory: the journal keeps no records, only per segment its first and last seq,
// size, an open file and a sparse offset index (one mark per 64 records), plus the
// per-writer table (at most Options.MaxWriters entries of at most 64-byte names).
//
// # On-disk format
//
// The directory holds a LOCK file (flock'ed while a journal is open, so two logd
// processes never share a directory) and segment files named "<first seq, 20 decimal
// digits>.seg", e.g. 00000000000000000001.seg. A segment is a sequence of frames, all
// integers little-endian:
//
//	frame   := len:u32 crc:u32 payload[len]     crc = CRC32C(len bytes ++ payload)
//	payload := 0x01 seq:u64 writerSeq:u64 wlen:u8 writer[wlen] data[...]   (entry)
//	         | 0x02 n:u16 n × (wlen:u8 writer[wlen] lastWriterSeq:u64)     (checkpoint)
//
// len is 1..MaxPayloadBytes. Entries in a segment have consecutive seqs starting at the
// seq in the file name. Every segment starts with a checkpoint of the per-writer table as
// it was when the segment was created, so a writer's lastWriterSeq survives even after
// all of its entries were rotated away. logd stores in data the canonical Cap'n Proto
// encoding (capnp.Canonicalize) of the oomd.capnp AuditRecord; the journal itself treats
// data as opaque bytes of at most MaxDataBytes.
//
// # Recovery
//
// Open scans every segment. The first frame that is short (torn write), has an impossible
// length, a wrong checksum, an unknown kind or an unexpected seq ends that segment: the
// file is truncated there. In the last segment this is the ordinary torn tail of a crash
// and loses nothing that was fsync'ed, because a record is acknowledged only after the
// fsync covering it and every earlier frame of the file is intact. A bad frame in a sealed
// (already fsync'ed) segment means the disk corrupted data; it is cut the same way, logged
// at ERROR, and the lost seqs are reported to readers as missed. Afterwards every
// remaining segment is fsync'ed, so whatever Open recovered is durable.
//
// # Example
//
//	j, err := journal.Open(dir, journal.Options{}, log)
//	if err != nil { ... }
//	defer j.Close()
//	seq, err := j.Append("oomd", 1, data) // ErrDuplicate, *GapError, ...
//	err = j.Sync(ctx, seq)                // now durable
//	entries, next, missed, err := j.Read(0, 100, 0)
package journal
