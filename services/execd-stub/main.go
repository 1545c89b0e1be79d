// Command execd-stub is oomd's process authority: it starts the services of a manifest,
// gives each its identity, reaps every exit (orphans too: it is PID 1 in the VM) and is
// the only process that signals subjects. See package supervisor for the protocol.
//
//	execd-stub --manifest FILE --runtime-dir DIR [--reboot-watcher-timeout 5s]
//
// SIGTERM or SIGINT stops every service in reverse dependency order; execd then exits 0.
// SIGHUP is passed on to the watchdog service alone (oomd re-reads its policy file).
// When a service marked exitWith exits, execd stops the others the same way and exits
// with that service's status. After a system teardown (SystemControl.teardown, asked for
// by the watchdog) execd keeps running with the watchdog alone; when the watchdog exits,
// execd exits with its status (as PID 1: powers off, unless the watchdog rebooted first).
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
	"oomd.dev/oomd/internal/sdnotify"
	"oomd.dev/oomd/internal/version"
	"oomd.dev/oomd/services/execd-stub/cgroup"
	"oomd.dev/oomd/services/execd-stub/manifest"
	"oomd.dev/oomd/services/execd-stub/pid1"
	"oomd.dev/oomd/services/execd-stub/supervisor"
)

func main() {
	code := run()
	if pid1.IsPID1() {
		_ = pid1.PowerOff() // returning from PID 1 would panic the kernel instead
	}
	os.Exit(code)
}

func run() int {
	// First, before anything can spawn: no fd we inherited reaches a child by accident.
	if err := markInheritedCloseOnExec(); err != nil {
		fmt.Fprintln(os.Stderr, "execd:", err)
		return 1
	}
	// Signals before slow start-up, so SIGTERM during boot still stops cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP (systemctl reload) goes on to the watchdog; it never ends execd.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	manifestPath := flag.String("manifest", "/etc/execd/manifest.json", "the service manifest (JSON)")
	runtimeDir := flag.String("runtime-dir", "/run/oomd", "private directory for sockets; created 0700; replaces ${RUNTIME_DIR} in the manifest")
	debug := flag.Bool("debug", false, "log at debug level")
	watcherTimeout := flag.Duration("reboot-watcher-timeout", supervisor.DefaultRebootWatcherTimeout,
		"during a system teardown, how long each reboot watcher may take to answer")
	cgroupFlag := flag.String("cgroup", "auto", "how subjects are contained: auto (the strongest available), v2, v1, proc (weaker: the /proc process tree), or off")
	noPages := flag.Bool("no-memstat-pages", false, "do not give children a memstat page (they publish over RPC, as in version 1)")
	memLimit := memlimit.Flag()
	logFormat := logx.FormatFlag()
	showVersion := version.Flag()
	flag.Parse()
	version.Exit(showVersion, os.Stdout)
	if err := logx.ApplyFormat(*logFormat); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	if *debug {
		// Children inherit the level, so --debug makes the whole stack verbose.
		os.Setenv(logx.LevelEnv, "debug")
	}
	log := logx.New("execd")
	defer log.Sync()
	memlimit.Apply(*memLimit, memlimit.Default, log)

	if *watcherTimeout <= 0 {
		log.Error("--reboot-watcher-timeout must be positive", zap.Duration("got", *watcherTimeout))
		return 1
	}
	if err := pid1.Setup(); err != nil {
		log.Error("PID 1 setup failed", zap.Error(err))
		return 1
	}
	if err := supervisor.EnableSubreaper(); err != nil {
		log.Error("cannot become child subreaper", zap.Error(err))
		return 1
	}
	if err := os.MkdirAll(*runtimeDir, 0o700); err != nil {
		log.Error("create runtime directory", zap.String("dir", *runtimeDir), zap.Error(err))
		return 1
	}
	if fi, err := os.Stat(*runtimeDir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("runtime directory is open to other users; sockets in it should be private",
			zap.String("dir", *runtimeDir), zap.Stringer("mode", fi.Mode().Perm()))
	}
	m, err := manifest.Load(*manifestPath)
	if err != nil {
		log.Error("bad manifest", zap.Error(err))
		return 1
	}
	m.Expand(*runtimeDir)

	var cg *cgroup.Manager
	if *cgroupFlag != "off" {
		want, err := cgroup.ParseMode(*cgroupFlag)
		if err != nil {
			log.Error("bad --cgroup", zap.Error(err))
			return 1
		}
		if cg, err = cgroup.Detect(cgroup.Options{Want: want}, log.Named("cgroup")); err != nil {
			log.Error("cannot contain subjects as asked", zap.String("cgroup", *cgroupFlag), zap.Error(err))
			return 1
		}
		defer cg.Close()
	}

	// Under systemd (Type=notify): READY=1 once the stack is up, STOPPING=1 when it stops,
	// and the unit's watchdog is fed by oomd's tick loop through execd's relay, so that
	// systemd need take notify messages from execd alone (no-ops elsewhere).
	var sup *supervisor.Supervisor
	relay, err := sdnotify.NewRelay(*runtimeDir, log.Named("notify"), func() int { return sup.WatchdogPid() })
	if err != nil {
		log.Error("cannot relay the systemd watchdog's pings", zap.Error(err))
		return 1
	}
	defer relay.Close()
	sup = supervisor.New(supervisor.Config{Manifest: m, Log: log, ReapOrphans: true, RebootWatcherTimeout: *watcherTimeout,
		Cgroups: cg, NoPages: *noPages, WatchdogEnv: relay.Env(),
		OnReady: func() { sdnotify.Ready(log) }, OnStopping: func() { sdnotify.Stopping(log) }})
	go relay.Run() // after sup is set: the relay asks it for the watchdog's pid
	go func() {
		for range hup {
			if err := sup.ReloadWatchdog(); err != nil {
				log.Warn("SIGHUP: could not pass it to the watchdog", zap.Error(err))
			}
		}
	}()
	code, err := sup.Run(ctx)
	if err != nil {
		log.Error("execd failed", zap.Error(err))
		return code
	}
	log.Info("stopped", zap.Int("exitCode", code))
	return code
}
