// Package sysoom is the I/O side of oomd's system OOM handling (docs/reliability/system-oom.md,
// where oomd plays the kernel's memory watchdog): reading MemAvailable, the persisted reboot
// record, and the reboot action. The decisions themselves — pressure levels with
// hysteresis, the halt token, the teardown bound — are in the pure policy core, so they
// share its event and audit sequences and replay with it; this package only does what
// the core cannot: touch files, devices and the machine.
//
// The record store is one BlockSize block at offset 0 of a path opened read-write: a
// regular file on a host, a raw block device in a VM (no filesystem). It is opened
// without following a symlink, must be a regular file or a block device, and its first
// block must be all zero (a fresh disk) or carry the record's magic, unless
// StoreOptions.Init (oomd --reboot-record-init) claims it. A start reads it once and
// marks it reported:
//
//	store, err := sysoom.OpenStore("/dev/nvme0n1")
//	boot, err := sysoom.StartBoot(store)      // reads, counts this boot, fsyncs
//	if m := boot.Marker(); m != "" {
//		fmt.Println(m)                        // oomd: last reboot reason=oom graceful=true
//	}
//	...
//	boot.InProgress(sysoom.ReasonOOM)         // before asking execd to tear down
//	boot.Complete(sysoom.ReasonOOM, true, 180, nil) // the outcome, before the action
//	code, err := action.Run()
//
// See docs/reliability/system-oom.md.
package sysoom
