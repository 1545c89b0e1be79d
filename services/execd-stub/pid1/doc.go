// Package pid1 does what the kernel expects of the first user-space process, so that execd
// can run as /init in the VM's initramfs without a shell or a separate init.
//
// The kernel starts /init with only the initramfs contents: no /proc, /sys or /dev (devtmpfs
// is not auto-mounted for an initramfs root), no /run, no cgroup2. Setup mounts them; it is a
// no-op unless the calling process is PID 1, so execd can call it unconditionally on the
// host as well. PowerOff and Reboot sync the filesystems and end the machine; they refuse to
// run unless the caller is PID 1, so a stray call from a host test cannot reboot the host.
//
//	func main() {
//		if err := pid1.Setup(); err != nil {
//			fmt.Fprintln(os.Stderr, "execd: pid1 setup:", err)
//			os.Exit(1)
//		}
//		code := run()
//		if pid1.IsPID1() {
//			_ = pid1.PowerOff() // returning from PID 1 would panic the kernel instead
//		}
//		os.Exit(code)
//	}
package pid1
