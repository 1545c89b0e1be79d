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
// processes never share a directory), the high-water mark file seq.hwm, segment files
// named "<first seq, 20 decimal digits>.seg", e.g. 00000000000000000001.seg, and, after
// damage was found, quarantine files "<segment>.quarantine.<n>" holding the damaged
// bytes for a human (nothing reads them). The directory and every file in it are
// opened without following symlinks (openat on the directory fd, O_NOFOLLOW) and must be
// a directory and regular files. A segment is a sequence of frames, all integers
// little-endian:
//
//	frame   := len:u32 crc:u32 payload[len]     crc = CRC32C(len bytes ++ payload)
//	payload := 0x01 seq:u64 writerSeq:u64 wlen:u8 writer[wlen] data[...]   (entry)
//	         | 0x02 n:u16 n × (wlen:u8 writer[wlen] lastWriterSeq:u64)     (checkpoint)
//	         | 0x03 from:u64 to:u64                                         (gap)
//
// len is 1..MaxPayloadBytes. Entries in a segment have consecutive seqs starting at the
// seq in the file name, except where a gap frame says seqs from..to are not in the
// journal (lost to damage, or skipped so no seq is reused); readers count them as
// missed. Every segment starts with a checkpoint of the per-writer table as it was when
// the segment was created, so a writer's lastWriterSeq survives even after all of its
// entries were rotated away. logd stores in data the canonical Cap'n Proto encoding
// (capnp.Canonicalize) of the oomd.capnp AuditRecord; the journal itself treats data as
// opaque bytes of at most MaxDataBytes.
//
// seq.hwm ("OOMDHWM1" reserved:u64 durable:u64 crc:u32) is replaced atomically (temp,
// fsync, rename, directory fsync) at Open, at Close and once every 1024 appends, before
// the first seq of the next batch is handed out: no seq above reserved was ever used,
// and every seq up to durable was fsync'ed when it was written (after a clean Close both
// are the last seq). Appends pay no extra fsync for it beyond one per batch.
//
// # Recovery
//
// Open walks every segment with internal/frame.Walk. An incomplete frame (or zeros) at
// the very end of the newest segment is a torn tail: the normal result of a crash
// mid-append, never acknowledged (a record is acknowledged only after the fsync
// covering it). It is cut and logged at WARN with the byte count.
//
// Anything else is corruption: a frame with a bad checksum, length, kind or seq that is
// followed by anything intact, any bad frame in an older segment, a complete but damaged
// frame at the end, seqs missing before the next segment, or records missing below the
// durable high-water mark (a cut on a frame boundary). Recovery then keeps every intact
// frame it can find after the damage (it resynchronises on the next offset where a frame
// checksum matches, the payload decodes and the seq fits between what was kept and what
// follows), copies the damaged bytes to a quarantine file, rewrites the segment (temp
// file, fsync, rename) with a gap frame for the missing seqs, logs each finding at ERROR
// with offsets and counts, counts it in Status, and lists it in Damage (logd writes a
// "corrupt" record for each into the journal itself). When the newest segment's end was
// damaged or cut, the journal continues above the high-water mark, so a seq a reader
// may have seen is never given to another record. Afterwards every remaining segment is
// fsync'ed, so whatever Open recovered is durable.
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
