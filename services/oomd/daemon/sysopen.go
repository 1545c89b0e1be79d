package daemon

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"

	"oomd.dev/oomd/services/oomd/sysoom"
)

// SystemOptions are oomd's system-OOM flags.
type SystemOptions struct {
	RecordPath string // --reboot-record: file or raw block device; "" = nothing persisted
	RecordInit bool   // --reboot-record-init: claim a store holding foreign data
	Action     string // --reboot-action: exit:N or reboot
	Meminfo    string // --meminfo: where MemAvailable is read ("" = /proc/meminfo)
	PSI        string // --psi: where memory pressure is read ("" = /proc/pressure/memory)
}

// OpenSystem opens the record store, reports the last reboot once (the marker line on
// markers), and returns the SystemConfig for the daemon with control as execd's
// teardown. The reboot action it installs exits the process. close releases the store.
func OpenSystem(o SystemOptions, control SystemControl, markers io.Writer, log *zap.Logger) (cfg SystemConfig, close func(), err error) {
	action, err := sysoom.ParseAction(o.Action)
	if err != nil {
		return cfg, nil, err
	}
	var store *sysoom.Store
	close = func() {}
	if o.RecordPath != "" {
		if store, err = sysoom.OpenStoreWith(o.RecordPath, sysoom.StoreOptions{Init: o.RecordInit}); err != nil {
			return cfg, nil, err
		}
		close = func() { store.Close() }
	} else {
		log.Warn("no --reboot-record: a reboot reason will not survive the reboot")
	}
	boot, err := sysoom.StartBoot(store)
	if err != nil {
		close()
		return cfg, nil, err
	}
	if m := boot.Marker(); m != "" {
		fmt.Fprintln(markers, m)
	}
	rec, ok := boot.LastReboot()
	log.Info("reboot record", zap.String("store", o.RecordPath), zap.Uint64("boot", boot.Number()), zap.Bool("lastValid", ok),
		zap.Stringer("lastReason", rec.Reason), zap.Bool("lastGraceful", rec.Graceful), zap.Strings("lastNotStopped", rec.NotStopped),
		zap.String("action", action.String()))
	reboot := func() {
		code, err := action.Run()
		if err != nil {
			log.Error("reboot action failed", zap.String("action", action.String()), zap.Error(err))
		}
		log.Sync()
		os.Exit(code)
	}
	return SystemConfig{Control: control, Boot: boot, Meminfo: o.Meminfo, PSI: o.PSI, Reboot: reboot}, close, nil
}
