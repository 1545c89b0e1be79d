// Command logd-stub is logd, oomd's audit journal: it serves the Journal interface of
// schema/oomd.capnp on a Unix socket and keeps the records in a bounded, checksummed,
// fsync'ed journal directory (see package journal for the format and the recovery).
//
//	logd-stub --socket /run/oomd/logd.sock --dir /var/lib/oomd/journal
//
// Started by execd (OOMD_SESSION_FD set) it calls Session.ready once the socket is
// listening; otherwise it runs standalone. SIGTERM or SIGINT stops it cleanly; it exits
// non-zero on a start-up error or a journal failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"oomd.dev/oomd/internal/logx"
	"oomd.dev/oomd/internal/memlimit"
	"oomd.dev/oomd/internal/version"
	"oomd.dev/oomd/services/logd-stub/journal"
	"oomd.dev/oomd/services/logd-stub/server"
)

func main() {
	// Registered first, so a SIGTERM during recovery still stops us cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var cfg server.Config
	flag.StringVar(&cfg.Socket, "socket", "", "Unix socket to serve the Journal on (required)")
	flag.StringVar(&cfg.Dir, "dir", "", "journal directory (required; created 0700)")
	flag.Int64Var(&cfg.Journal.MaxSegmentBytes, "max-segment-bytes", journal.DefaultMaxSegmentBytes, "seal a segment file at this size")
	flag.IntVar(&cfg.Journal.MaxSegments, "max-segments", journal.DefaultMaxSegments, "segment files kept; the oldest is deleted beyond this (disk bound = max-segments × max-segment-bytes)")
	flag.IntVar(&cfg.Journal.MaxWriters, "max-writers", journal.DefaultMaxWriters, "distinct writer names accepted")
	memLimit := memlimit.Flag()
	logFormat := logx.FormatFlag()
	showVersion := version.Flag()
	flag.Parse()
	version.Exit(showVersion, os.Stdout)
	if err := logx.ApplyFormat(*logFormat); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if cfg.Socket == "" || cfg.Dir == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: logd-stub --socket PATH --dir DIR [--max-segment-bytes N] [--max-segments N] [--max-writers N]")
		os.Exit(2)
	}

	log := logx.New("logd")
	defer log.Sync()
	memlimit.Apply(*memLimit, memlimit.Default, log)

	if err := server.Run(ctx, cfg, log); err != nil {
		log.Error("logd failed", zap.Error(err))
		log.Sync()
		os.Exit(1)
	}
}
