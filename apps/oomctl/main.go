// Command oomctl is the operator's CLI for oomd: status, policy get/set, events (with
// --follow) and the audit journal, readable by default and one JSON object per line with
// --json. Run `oomctl help` for the commands, flags and exit codes; the logic lives in
// internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"oomd.dev/oomd/apps/oomctl/internal/cli"
	"oomd.dev/oomd/internal/logx"
)

func main() {
	// Signals end --follow cleanly (exit 0) and abort a pending call.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	log := logx.New("oomctl")
	code := cli.Main(ctx, os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Log: log,
		Name: filepath.Base(os.Args[0])})
	log.Sync()
	stop()
	os.Exit(code)
}
