// Package supervisor is execd's process authority: it starts the manifest's services in
// dependency order, gives each child its identity, observes and reaps every exit, is the
// only code that signals a subject, restarts services by policy, and stops everything in
// reverse order.
//
// # What a child gets
//
// Each child is started with its own process group, Pdeathsig=SIGKILL, stdin /dev/null,
// execd's stdout and stderr, and exactly these inherited fds (everything else execd holds
// is close-on-exec):
//
//	fd 3  OOMD_SESSION_FD  its connection to execd; the bootstrap is a Session bound to
//	                       (subject, instance), so whoami is always its own identity.
//	fd 4  OOMD_MEMSTAT_FD  every child except the watchdog: a SOCK_SEQPACKET delivery
//	                       socket on which execd passes (rpcx.DeliverConn) one end of a
//	                       fresh stream socketpair each time a watchdog instance appears;
//	                       the other end goes to that watchdog (its memstat sink). Without
//	                       a watchdog in the manifest execd closes it at once.
//	fd 4  OOMD_BROKER_FD   the watchdog only: a SOCK_SEQPACKET socket on which execd sends
//	                       one SubjectHandoff (rpcx.SendMsgFDs) per other child, carrying the
//	                       watchdog's end of that child's memstat socketpair, a read-only
//	                       fd for its cgroup's count (and memory.stat), and a read-only fd
//	                       for its memstat page, listed in SubjectHandoff.fds.
//	fd 5  OOMD_MEMSTAT_PAGE_FD  every child except the watchdog: the read-write fd of its
//	                       sealed one-page memfd (docs/memstat-page.md), unless execd runs
//	                       with --no-memstat-pages.
//	      OOMD_SUBJECT     the subject id, informational only (logs).
//
// # Containment
//
// With Config.Cgroups every instance runs in a cgroup of its own from its first
// instruction (package cgroup: v2, v1 through a joining shim, or the weaker /proc tree).
// terminate and stop signal every process of the group, and an instance has exited only
// when its group is empty: after its main process is reaped, whatever is left gets
// SIGTERM, the stop timeout, then SIGKILL until the group is empty; then the cgroup is
// removed and the exit is reported (so "observed to exit" means the whole subject).
//
// Inherited OOMD_* variables are removed from the environment execd passes on, then the
// manifest's env is applied (it may not use the OOMD_ prefix), then the variables above.
//
// # Readiness and start order
//
// Services start one at a time in manifest.StartOrder. A service is started once every
// service it depends on has called Session.ready (any instance, once). A dependency that
// exits before it was ready fails start-up: execd stops what it started, in reverse
// order, and Run returns an error naming the dependency and its exit status. A service
// that others depend on must therefore call ready; one without dependents need not.
//
// # Exits
//
// The waiter for a child starts right after fork and reaps it with waitid on its pidfd
// (os/exec's Wait), so no exit is lost, however early. Every exit becomes an ExitReport,
// pushed in order to the ExitWatcher registered with Terminator.watchExits from one
// goroutine per watcher, one call at a time. Reports that find no watcher (none yet, or
// the last one failed) wait in a backlog of at most MaxExitBacklog reports (beyond that
// the oldest not in flight are dropped and counted) and are delivered on the next
// registration.
// Delivery is in order and at least once: a report whose call failed or was cut short
// by a new registration is sent again to the next watcher. oomd answers a report only
// once what it caused is durable in its audit trail, so a report whose kill record died
// with an oomd reaches the next one.
//
// # Orphans
//
// execd is PID 1 in the VM (and a child subreaper on the host), so re-parented
// grandchildren end up as its zombies. With Config.ReapOrphans, on every SIGCHLD (and
// after each managed child was reaped) the reaper peeks with waitid(P_ALL,
// WNOWAIT|WNOHANG) and reaps only pids that are not managed children; a spawn registers
// its pid under the same lock as the peek, so a managed child's status is never taken.
//
// # Broker
//
// For every live child the broker makes sure the current watchdog instance holds a
// connection to it: it creates a stream socketpair, sends one end to the watchdog with a
// SubjectHandoff and then delivers the other end to the child on its delivery socket.
// This runs in spawn order from one goroutine (a slow watchdog never blocks a spawn);
// children started before the watchdog wait in a list that holds only live children.
// When the watchdog restarts, its new instance gets a fresh handoff for every live child,
// and each child receives the matching new connection (lib/memstat reconnects on receipt
// and re-publishes its latest value), so a restarted watchdog watches everything again.
// execd keeps no copy of a handed-over socket, since a new Cap'n Proto peer cannot take
// over a half-used stream. A child that never reads its delivery socket only fills its
// queue (bounded by the socket buffer, deliveryWriteTimeout per attempt).
//
// SO_PEERCRED of a socketpair names its creator, so on a brokered socket it reports
// execd's pid, not the child's. A watchdog that wants the kernel's word on the sender
// turns on SO_PASSCRED and reads the pid attached (SCM_CREDENTIALS) to what the child
// sends; it equals SubjectHandoff.pid (see the broker test).
//
// # Restarts
//
// Restart "on-failure" restarts after a non-zero exit or a signal, "always" after any
// exit. Never after terminate() (that is a kill) nor during shutdown. The delay is
// RestartBaseDelay doubled per consecutive failure, capped at RestartMaxDelay; an
// instance that stayed up RestartResetAfter resets the count. Each restart is a new
// instance with a new session and, for non-watchdog services, a new SubjectHandoff.
//
// # Stopping
//
// Run stops when its context ends (SIGTERM) or when a service marked exitWith exits on
// its own; then it returns that service's status as the exit code. Stop (and Run)
// refuses further terminate() calls with shuttingDown, cancels pending restarts, then
// stops services in the reverse of start order, one at a time: SIGTERM, up to the
// service's stopTimeoutMs, then SIGKILL. If execd itself dies, Pdeathsig kills every
// child (Go never ends the OS thread that forked them: nothing in execd locks a thread).
//
// # System teardown
//
// The watchdog (oomd, in the role of the kernel's memory watchdog; docs/reliability/system-oom.md) asks for a graceful teardown with
// SystemControl.teardown(reason) before it reboots; execd plays userspace. Any child may
// register a RebootWatcher first, through its own Session.watchReboot (the watchdog may
// also use SystemControl.watchReboot): one per subject, the latest registration wins,
// and it ends when that instance exits. Teardown (see Supervisor.Teardown) then:
//
//  1. shuts execd down: terminate() answers shuttingDown, pending restarts are
//     cancelled, nothing starts or restarts any more;
//  2. calls every reboot watcher at once and waits for each answer at most
//     Config.RebootWatcherTimeout (execd --reboot-watcher-timeout, 5 s by default);
//     subjects whose watcher did not answer in time are reported in watchersTimedOut
//     (a watcher whose call failed, e.g. its process is gone, counts as answered);
//  3. stops the services level by level (manifest.TeardownLevels): reverse dependency
//     order, every service the watchdog depends on (transitively: logd, so the audit
//     journal can flush) after all the others, the watchdog itself not at all. The
//     services of one level do not depend on each other and are stopped concurrently,
//     each with SIGTERM, its own stopTimeoutMs, then SIGKILL (reported in notStopped, in
//     level order); the next level starts once all of them have exited. Levels rather
//     than a fully dependency-driven start keep the stop order and the report
//     deterministic; the price is that a slow service holds back its whole level, never
//     more than its stop timeout plus the SIGKILL grace;
//  4. returns the report (graceful: nothing needed SIGKILL and no watcher was late):
//     the return is the acknowledgement.
//
// A teardown runs at most once per execd run: a second request fails ("teardown already
// in progress", or "already done") and starts nothing. The handler calls call.Go() and
// holds no lock while it waits. A SIGTERM to execd during a teardown lets the teardown
// finish, then stops what is left (the watchdog) as usual. Afterwards execd keeps running
// with the watchdog alone; when the watchdog exits (on the host oomd exits with its
// configured code), Run returns its status as execd's exit code, and as PID 1 execd then
// powers off. In the VM oomd reboots the machine itself before that.
package supervisor
