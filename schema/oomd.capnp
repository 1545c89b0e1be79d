# oomd wire contract, v1.
#
# Every process-to-process call in oomd uses these types over Cap'n Proto RPC on Unix
# domain sockets. gen/oomdpb is generated from this file (`make gen`) and committed;
# `make check-gen` fails when it is stale.
#
# Processes and who serves what:
#   execd  serves Session (one per child, bound to that child's id), Terminator and
#          SystemControl (reachable only through oomd's Session), and brokers one direct
#          connection per child to oomd, tagged with a SubjectHandoff.
#   oomd   serves Control on its own socket, and a MemstatSink on each brokered
#          connection (bound to the subject execd named for it).
#   logd   serves Journal on its own socket.
#   hog    serves TestHook as its bootstrap on the brokered connection.
#
# VERSIONING RULE. The file id and every existing ordinal, name, type and meaning are
# frozen. A change may only:
#   - add a field at the next ordinal (old peers ignore it; new peers reading an old
#     message see the field's default, so every default must mean "not set / old
#     behaviour");
#   - add a method at the next ordinal (an old server answers `unimplemented`, which a
#     new client must treat as "feature absent");
#   - add an enumerant at the end (an old peer reads an unknown enumerant as its raw
#     number; code must treat unknown enumerants as "unknown", never as the first value).
# Removing, renumbering or retyping anything needs a new interface with a new id. Unions
# gain members only at new ordinals. Bounds below are enforced by the receiver, which
# rejects the whole message (with an error naming the field and the bound) rather than
# truncating it.
#
# Units: bytes are bytes (UInt64); ticks are oomd policy ticks (one tick = sampleMs);
# milliseconds are named *Ms. No wall-clock timestamp appears anywhere in this contract:
# ordering is by sequence numbers and ticks.

@0xe9e9580b3801b56a;

using Go = import "/go.capnp";
$Go.package("oomdpb");
$Go.import("oomd.dev/oomd/gen/oomdpb");

# ---------------------------------------------------------------------------------------
# Bounds
#
# Shared by every peer: the receiver enforces them. `make gen` writes them into
# gen/oomdpb (typed) and gen/bounds (untyped, no imports, for the policy core); Go code
# refers to those and never repeats the numbers. One constant per line, in the form
# scripts/genbounds reads.

const maxSubjectBytes :UInt32 = 64; # bounds a subject id (1..64 bytes of [a-z0-9._-]).
const maxReasonBytes :UInt32 = 256; # bounds a reason (event, audit record, terminate).
const maxWriterBytes :UInt32 = 64; # bounds a writer name given to Journal.open.
const maxTracePosBytes :UInt32 = 128; # bounds AuditRecord.tracePos.
const maxReadLimit :UInt32 = 1024; # bounds the limit of Journal.read, Control.events/audit.
const memstatPageBytes :UInt32 = 4096; # is the memstat page's size (docs/memstat-page.md).
const maxCritical :UInt32 = 64; # bounds the entries of Policy.critical.
const maxOverrides :UInt32 = 256; # bounds the entries of Policy.overrides.
const maxVictimList :UInt32 = 256; # bounds each of Victims.prefer, avoid and never.

# ---------------------------------------------------------------------------------------
# Policy

struct Policy {
  # The limits oomd enforces for every subject without an override.

  softBytes @0 :UInt64;
  # Usage above this emits one softExceeded event per upward crossing. 0 < softBytes.

  hardBytes @1 :UInt64;
  # Usage above this produces exactly one kill decision per subject instance.
  # softBytes <= hardBytes <= 2^50 (1 PiB).

  sampleMs @2 :UInt32;
  # Length of one tick in milliseconds: how often oomd evaluates samples. 10..60000.

  killBudget @3 :UInt32;
  # At most this many terminate requests per killWindowTicks. 1..1024.

  killWindowTicks @4 :UInt32;
  # Length of the kill-rate window in ticks. 1..1000000.

  critical @5 :List(Text);
  # Subject ids that are never killed (killDenied instead), in addition to the defaults
  # init, execd, samgrd, policyd, logd, oomd, which are always critical and cannot be
  # removed. At most 64 entries, each a valid subject id. getPolicy returns the list as
  # set; Status shows each subject's effective criticality.

  overrides @6 :List(SubjectLimit);
  # Per-subject limits replacing softBytes/hardBytes for that subject. At most 256
  # entries, no subject twice, each obeying the same bounds as the global limits.

  levels @7 :LevelThresholds;
  # System memory-pressure thresholds. Unset (all zero) means "level monitoring off".

  oomTimeoutMs @8 :UInt32;
  # Upper bound on the graceful OOM teardown before oomd reboots regardless.
  # 0 means the default (30000). Otherwise 1000..600000.

  signal @9 :Signal;
  # Which reading the limits apply to, for subjects without an override that says.
  # Default `max`: the larger of the kernel's working set and the cooperative value.

  underReport @10 :UnderReport;
  # When the kernel's count exceeds what a subject publishes. Unset = the defaults.

  victims @11 :Victims;
  # Victim selection under system pressure. Unset = the defaults (victims at
  # imminentOom, 500 points, settle 10 ticks, no preference lists); victims only act
  # while levels are set.

  dryRun @12 :Bool;
  # Report hard-limit crossings (wouldKill: audited, once per crossing) and terminate
  # nothing: no kill decision is made, and victims are only named (victimWouldKill).
  # SubjectLimit.dryRun overrides it per subject.
}

struct Victims {
  # While the pressure level is at or above `level`, oomd kills one non-critical subject
  # at a time: the one with the highest score = its enforced reading per mille of its own
  # hard limit (integer), + preferPoints if preferred, - avoidPoints if avoided (floor 0);
  # ties go to the smaller subject id. The next victim waits until the previous kill was
  # observed (or its decision ended otherwise) and settleTicks passed. Critical subjects
  # and subjects whose preference is never are never victims.
  level @0 :VictimLevel;
  preferPoints @1 :UInt32; # 0 = default (500); else 1..100000
  avoidPoints @2 :UInt32;  # 0 = default (500); else 1..100000
  settleTicks @3 :UInt32;  # 0 = default (10); else 1..1000000
  dryRun @4 :Bool;         # report victimWouldKill instead of deciding
  prefer @5 :List(Text);   # subject ids preferred as victims (at most 256)
  avoid @6 :List(Text);    # subject ids avoided (at most 256)
  never @7 :List(Text);    # subject ids never victims (at most 256)
  # A subject may appear in one list only. The lists override SubjectHandoff.preference,
  # except that never from either side holds.
}

enum VictimLevel {
  default @0;     # imminentOom
  off @1;         # no victims (the system OOM path alone)
  warning @2;
  imminentOom @3;
}

enum Preference {
  # A subject's standing in victim selection (Victims).
  none @0;
  prefer @1;
  avoid @2;
  never @3; # never a victim (its own hard limit still applies; use critical for that)
}

enum Signal {
  # The reading a subject's limits apply to (docs/reliability/oom-policy.md).
  max @0;         # the larger of kernel and cooperative (a subject that never published
                  # is enforced on the kernel's count alone)
  kernel @1;      # the kernel's working set of the subject's cgroup (or /proc tree)
  cooperative @2; # what the subject publishes on its memstat page (what the subject says it holds)
}

struct UnderReport {
  # memstatUnderReported is raised once per episode when kernel > cooperative + marginBytes
  # for ticks consecutive ticks (only for subjects that publish). An episode ends when the
  # gap closes. All zero = the defaults (64 MiB, 3 ticks).
  marginBytes @0 :UInt64; # 0 = default; else 1 MiB..1 PiB
  ticks @1 :UInt32;       # 0 = default; else 1..10000
}

struct SubjectLimit {
  subject @0 :Text;     # a subject id (see SubjectHandoff.subject for the format)
  softBytes @1 :UInt64; # as Policy.softBytes
  hardBytes @2 :UInt64; # as Policy.hardBytes
  signal @3 :Signal;    # as Policy.signal, for this subject
  hasSignal @4 :Bool;   # signal is set here (else Policy.signal applies)
  dryRun @5 :Bool;      # as Policy.dryRun, for this subject (a dry-run subject is never
                        # a victim either)
  hasDryRun @6 :Bool;   # dryRun is set here (else Policy.dryRun applies)
}

struct LevelThresholds {
  # Levels are derived from MemAvailable. A level is entered when MemAvailable falls to or
  # below its threshold, and left only when MemAvailable rises above the threshold plus
  # hysteresisBytes. Required when set: oomBytes < imminentOomBytes < warningBytes.

  warningBytes @0 :UInt64;     # MemAvailable at or below this: warning
  imminentOomBytes @1 :UInt64; # at or below this: imminentOom
  oomBytes @2 :UInt64;         # at or below this: oom (starts the system OOM sequence)
  hysteresisBytes @3 :UInt64;  # <= warningBytes - oomBytes
  intervalMs @4 :UInt32;       # how often MemAvailable is read; 0 = sampleMs; else 10..10000
  # PSI (/proc/pressure/memory "full avg10", in hundredths of a percent): the level in
  # force is the deeper of the MemAvailable level and the PSI level. Entered at or above
  # a threshold, left below it minus psiHysteresis. All zero = PSI not used; else
  # 0 < psiWarning < psiImminentOom < psiOom <= 10000 and psiHysteresis < psiWarning.
  psiWarning @5 :UInt32;
  psiImminentOom @6 :UInt32;
  psiOom @7 :UInt32;
  psiHysteresis @8 :UInt32;
}

enum PressureLevel {
  normal @0;
  warning @1;
  imminentOom @2;
  oom @3;
}

# ---------------------------------------------------------------------------------------
# Events

enum EventKind {
  subjectRegistered @0;   # execd handed over a subject; bytes = 0, reason = "critical" or ""
  subjectExited @1;       # execd reported the exit; reason = "exit=<code>" or "signal=<name>"
  softExceeded @2;        # usage crossed softBytes upward; bytes = usage, limit = softBytes
  softCleared @3;         # usage fell back to or below softBytes; re-arms softExceeded
  killDecided @4;         # usage crossed hardBytes, or a pressure victim was picked
                          # (reason "pressure victim: ..."); an audit record was produced
  killRequested @5;       # audit durable, terminate sent to execd (the budget was spent)
  killThrottled @6;       # decided but over the kill budget; will be released in order
  killed @7;              # execd acknowledged AND the exit was observed
  killDenied @8;          # a critical subject crossed hardBytes; reason says why
  killRefused @9;         # execd refused terminate; reason carries execd's refusal
  memstatRejected @10;    # a sample claimed another subject; dropped; subject = the
                          # authenticated sender, reason = "claimed=<id>"
  policyChanged @11;      # a new policy is in force; reason = "version=<n>"
  levelChanged @12;       # system pressure level changed; reason = "<from>-><to>"
  haltClaimed @13;        # the halt token was claimed; reason = the reboot reason
  haltRefused @14;        # a later reboot/OOM request found the token already claimed
  rebootAcked @15;        # execd acknowledged the graceful teardown before the timeout
  rebootTimedOut @16;     # the OOM timeout fired first; reason names unstopped services
  auditSpilled @17;       # logd unreachable; the audit record went to the spill file
  memstatUnderReported @18; # kernel count > published value + margin for N ticks; once
                            # per episode; bytes = kernel, limit = cooperative
  kernelReadFailed @19;   # the kernel's count could not be read; once per episode;
                          # reason says why
  memstatInvalid @20;     # the subject's memstat page was unreadable (bad magic or
                          # version, or torn on every retry); once per episode
  victimWouldKill @21;    # victims.dryRun: the subject oomd would kill under pressure now;
                          # bytes = its reading, limit = its hard limit, reason as a
                          # victim decision's. Once per subject instance per episode.
  wouldKill @22;          # dry run (Policy.dryRun / SubjectLimit.dryRun): the subject
                          # crossed hardBytes and would be killed; audited, nothing is
                          # terminated; once per crossing; bytes = usage, limit = hardBytes.
                          # decision != 0: a decision made before the dry run, ended unsent
}

struct Event {
  seq @0 :UInt64;      # strictly increasing, also across oomd restarts: a run starts
                       # above the high-water mark its predecessors reserved
                       # (Status.eventSeqBase), so numbers may skip at a restart
  tick @1 :UInt64;     # the policy tick at which the event happened; ticks count from 0 in
                       # each oomd run (Status.startedAtNs says when this one started)
  subject @2 :Text;    # subject id, or "" for system-wide events
  kind @3 :EventKind;
  bytes @4 :UInt64;    # usage in bytes that the event is about (0 if none)
  limit @5 :UInt64;    # the threshold involved, in bytes (0 if none)
  reason @6 :Text;     # short machine-readable detail, at most 256 bytes
  decision @7 :UInt64; # kill decision id (1, 2, ...) for kill* events, else 0
  wallTimeNs @8 :Int64; # wall clock (Unix ns) when oomd's shell published the event, for
                        # people; the deterministic core never sees it. 0 = unknown
}

# ---------------------------------------------------------------------------------------
# Audit journal (logd)

struct AuditRecord {
  # One durable fact about a decision. oomd writes one before every terminate request.

  writerSeq @0 :UInt64; # the writer's own sequence: 1, 2, 3, ... gap-free per writer
  tick @1 :UInt64;      # the writer's tick when the record was made
  kind @2 :EventKind;   # what happened (killDecided before a kill, killDenied, ...)
  subject @3 :Text;     # subject id, at most 64 bytes
  bytes @4 :UInt64;     # usage at the decision, in bytes
  limit @5 :UInt64;     # the threshold crossed, in bytes
  decision @6 :UInt64;  # the kill decision id, 0 if none
  reason @7 :Text;      # at most 256 bytes
  instance @8 :UInt64;  # execd's instance number of the subject (0 if none)
  execdRun @9 :UInt64;  # which run of execd the instance belongs to (instance numbers
                        # restart with execd): oomd's shell stamps a hash of the boot id
                        # and execd's pid and start time; 0 = unknown (older writers)
  tracePos @10 :Text;   # where the inputs that led to this record end in oomd's live
                        # trace: "<file>:<offset>" (oomctl replay); at most 128 bytes
}

struct JournalEntry {
  seq @0 :UInt64;        # logd's journal sequence: 1, 2, 3, ... survives restarts
  writer @1 :Text;       # who appended it (the name given to Journal.open)
  record @2 :AuditRecord;
  appendedAtNs @3 :Int64; # logd's wall clock when it appended the entry (Unix ns), for
                          # people; 0 = unknown (written by an older logd). Never an order.
}

interface Journal {
  # logd's service. Any local process that can open logd's socket may read; writers name
  # themselves in open().

  open @0 (writer :Text) -> (appender :Appender, lastWriterSeq :UInt64);
  # Start (or resume) appending as `writer` (1..64 bytes). lastWriterSeq is the highest
  # writerSeq of this writer already durable, so a writer that restarted or spilled knows
  # what to replay; records with writerSeq <= lastWriterSeq are dropped as duplicates.

  read @1 (sinceSeq :UInt64, limit :UInt32) -> (entries :List(JournalEntry), nextSeq :UInt64, missed :UInt64);
  # Entries with seq > sinceSeq, oldest first, at most limit (1..1024). nextSeq is the seq
  # to pass as sinceSeq next time. missed counts entries after sinceSeq that were already
  # rotated away (0 if the caller did not fall behind).

  status @2 () -> (firstSeq :UInt64, lastSeq :UInt64, durableSeq :UInt64, diskBytes :UInt64);
}

interface Appender {
  append @0 (record :AuditRecord) -> stream;
  # Queue one record. writerSeq must be exactly the previous writerSeq + 1 (or a
  # duplicate <= lastWriterSeq, which is dropped); anything else fails the stream.

  sync @1 (upTo :UInt64) -> (durableWriterSeq :UInt64);
  # Returns only after every record of this writer with writerSeq <= upTo has been
  # written and fsync'ed. This is the acknowledgement a kill waits for.
}

# ---------------------------------------------------------------------------------------
# Memstat: the cooperative signal

struct Memstat {
  # A sample is fixed-size apart from claimedSubject, which is at most 64 bytes; the
  # sink rejects anything larger. The subject a sample counts for is the one bound to
  # the sink it arrived on, never this payload.

  claimedSubject @0 :Text; # who the sender says it is; a mismatch is memstatRejected
  bytes @1 :UInt64;        # bytes the sender's allocator holds (NOT kernel RSS)
  seq @2 :UInt64;          # the publisher's own counter; lets oomd count gaps
}

interface MemstatSink {
  report @0 (sample :Memstat) -> stream;
  # Samples are coalesced per subject per tick (the latest wins).
}

struct SubjectHandoff {
  # Sent by execd to oomd on their private broker socket, as a single Cap'n Proto message
  # carrying the oomd end of a fresh socketpair as SCM_RIGHTS. The child holds the other
  # end. Identity comes from execd and the kernel, never from the child.

  subject @0 :Text;    # 1..64 bytes of [a-z0-9._-], starting with a letter or digit
  instance @1 :UInt64; # execd's spawn counter for this subject; distinguishes restarts
  pid @2 :Int32;       # the child's pid; oomd may check it against SO_PEERCRED
  critical @3 :Bool;   # the manifest marks it critical (policy may add more)
  injectable @4 :Bool; # the child serves a TestHook as its bootstrap on this connection
  cgroupMode @5 :CgroupMode; # how the subject is contained; which reading fds follow
  fds @6 :List(HandoffFd);   # what each passed fd is, in SCM_RIGHTS order. Empty (an old
                             # execd): one fd, the memstat socket.
  preference @7 :Preference; # the manifest's victim preference (none from an old execd)
}

enum CgroupMode {
  none @0; # no kernel reading is passed
  v2 @1;   # usage = memory.current, stat = memory.stat of the subject's cgroup
  v1 @2;   # usage = memory.usage_in_bytes, stat = memory.stat (cgroup v1 memory)
  proc @3; # usage = the /proc/PID directory of the first process (weaker: a daemonising
           # process escapes the tree)
}

enum HandoffFd {
  memstatSocket @0; # oomd's end of the subject's socket (its TestHook, if injectable)
  usage @1;         # read-only: the kernel's count (see CgroupMode)
  memoryStat @2;    # read-only: memory.stat, for the working set
  page @3;          # read-only: the subject's memstat page (docs/memstat-page.md)
}

interface TestHook {
  # Test-only: the hog fixture's bootstrap on its memstat connection.
  inject @0 (bytes :UInt64) -> (totalBytes :UInt64);
  # Allocate and touch `bytes` more (bounded by the hog's own arena cap), publish the new
  # total at once, and return it.
}

# ---------------------------------------------------------------------------------------
# execd: the process authority

interface Session {
  # A child's bootstrap capability on the connection execd gives it (inherited fd).
  # The session is bound to the child's subject id by execd; nothing the child sends can
  # change that.

  whoami @0 () -> (subject :Text, instance :UInt64, critical :Bool);

  ready @1 () -> ();
  # The child is up; execd starts the children that depend on it.

  grants @2 () -> (terminator :Terminator, system :SystemControl);
  # Only for the subject the manifest names as the watchdog (oomd). Any other session
  # gets an error; the capabilities exist nowhere else.

  watchReboot @3 (watcher :RebootWatcher) -> ();
  # Any child: register watcher to be told (RebootWatcher.rebooting) before a system
  # teardown stops services. One watcher per subject: a later registration (or one
  # through SystemControl.watchReboot by the watchdog) replaces the earlier one, and it
  # ends when that instance exits. The watcher is named by the session's subject id in
  # TeardownReport.watchersTimedOut. Fails once a teardown has started.
}

enum Refusal {
  none @0;
  critical @1;     # the subject is critical: execd never terminates it
  unknown @2;      # no such subject
  notRunning @3;   # the subject (or that instance) already exited
  shuttingDown @4; # a system teardown is in progress
}

struct ExitReport {
  subject @0 :Text;
  instance @1 :UInt64;
  pid @2 :Int32;
  exitCode @3 :Int32;  # valid when signal == 0
  signal @4 :Int32;    # the terminating signal, 0 if it exited normally
  killed @5 :Bool;     # execd escalated to SIGKILL after the stop timeout
  terminated @6 :Bool; # the exit followed a terminate() request
  decision @7 :UInt64; # the decision id that terminate() request carried (0: none), so
                       # a restarted oomd can complete a kill its predecessor requested
}

interface ExitWatcher {
  exited @0 (report :ExitReport) -> ();
  # Returns once what the exit caused is durable on the watcher's side (oomd: the audit
  # records it led to, a kill completed). execd sends reports one at a time and keeps a
  # report whose call failed or was never answered for the next watcher, so an exit is
  # delivered at least once; a watcher treats a repeated report as already handled.
}

interface Terminator {
  # Held by oomd only.

  terminate @0 (subject :Text, instance :UInt64, decision :UInt64, reason :Text)
      -> (refusal :Refusal, detail :Text, pid :Int32);
  # Asks execd to stop that instance: SIGTERM now, SIGKILL after its stopTimeoutMs.
  # Returns once the signal was sent (refusal == none) or with the refusal. The exit is
  # reported to the watcher given to watchExits.

  watchExits @1 (watcher :ExitWatcher) -> ();
  # Every child exit from now on is reported to watcher, in order. Replaces any earlier
  # watcher.
}

enum RebootReason {
  unknown @0;
  oom @1;
  userRequest @2;
}

struct TeardownReport {
  graceful @0 :Bool;            # every service stopped within its stop timeout and every
                                # reboot watcher answered within its bound
  teardownMs @1 :UInt32;        # how long the teardown took
  notStopped @2 :List(Text);    # services that needed SIGKILL, in stop order
  watchersTimedOut @3 :List(Text); # reboot watchers that did not answer in time
}

interface RebootWatcher {
  # Registered with SystemControl.watchReboot; told before the teardown starts. Its
  # return is its acknowledgement (bounded by execd, 5 s by default).
  rebooting @0 (reason :RebootReason) -> ();
}

interface SystemControl {
  # Held by oomd only (the watchdog, in the kernel's role, asks userspace to tear down; docs/reliability/system-oom.md).

  teardown @0 (reason :RebootReason) -> (report :TeardownReport);
  # Notify reboot watchers, stop every service in reverse dependency order (keeping logd
  # and the caller until last), and return: the return is the acknowledgement.

  watchReboot @1 (watcher :RebootWatcher) -> ();
}

# ---------------------------------------------------------------------------------------
# oomd's control API (its own socket, owner-only)

struct SubjectStatus {
  subject @0 :Text;
  instance @1 :UInt64;
  bytes @2 :UInt64;      # latest accepted sample
  softBytes @3 :UInt64;  # effective limits for this subject
  hardBytes @4 :UInt64;
  state @5 :SubjectState;
  critical @6 :Bool;
  rejected @7 :UInt64;   # samples dropped for claiming another subject
  kernelBytes @8 :UInt64;      # the kernel's working set at the last tick (0: no reading)
  cooperativeBytes @9 :UInt64; # the latest value the subject published (0: none)
  signal @10 :Signal;          # which reading its limits apply to
  cgroupMode @11 :CgroupMode;  # how it is contained (proc = weaker)
  published @12 :Bool;         # the subject has published at least once
}

enum SubjectState {
  normal @0;
  soft @1;         # above softBytes
  hard @2;         # above hardBytes, kill decided (awaiting audit or budget), or denied
  terminating @3;  # terminate requested
  exited @4;
}

struct Status {
  tick @0 :UInt64;
  policyVersion @1 :UInt64;
  lastEventSeq @2 :UInt64;
  subjects @3 :List(SubjectStatus); # sorted by subject id; at most 1024 (see truncated)
  truncated @4 :Bool;
  kills @5 :UInt64;
  denied @6 :UInt64;
  throttled @7 :UInt64;
  rejectedSamples @8 :UInt64;
  acceptedSamples @9 :UInt64;
  level @10 :PressureLevel;
  memAvailableBytes @11 :UInt64;
  haltClaimed @12 :Bool;
  injectEnabled @13 :Bool;
  # The pressure victim the core would pick now (policy.Core.VictimPreview): its id, the
  # reason a decision would carry (score, runners-up), and what holds the decision back
  # ("" = the next tick at the victim level decides; "dry run", "level=normal below
  # imminentOom", "victim decision=<n> in flight", "settling until tick <t>", ...).
  # All three empty when no subject is a candidate.
  victim @14 :Text;
  victimReason @15 :Text;
  victimHold @16 :Text;
  # This oomd run: its events have seqs above eventSeqBase (earlier runs' events are gone
  # with them), its ticks count from 0 at startedAtNs (wall clock, Unix ns).
  eventSeqBase @17 :UInt64;
  startedAtNs @18 :Int64;
  # The audit trail: records made but not yet durable (a kill waits for its own), logd
  # not connected now, and records held in oomd's spill file until logd has them.
  auditWaiting @19 :UInt64;
  auditLogdDown @20 :Bool;
  auditSpilled @21 :UInt64;
}

struct RebootRecord {
  # Persisted with a checksum and fsync before the reboot; read once on the next start.
  valid @0 :Bool;              # false: no record, or torn/corrupt (reason reads unknown)
  reason @1 :RebootReason;
  graceful @2 :Bool;
  teardownMs @3 :UInt32;
  notStopped @4 :List(Text);
  bootCount @5 :UInt64;        # which boot wrote it (monotonic across reboots)
}

interface EventSubscriber {
  push @0 (events :List(Event), missed :UInt64) -> stream;
  # Events in seq order; missed > 0 when the subscriber was too slow and the ring
  # overwrote events before they could be sent.
}

interface Subscription {
  # Releasing it (or the connection dropping) ends the subscription.
}

interface LevelWatcher {
  changed @0 (level :PressureLevel, memAvailableBytes :UInt64, seq :UInt64) -> ();
  # Edge-triggered. The return is the acknowledgement; changes arriving before it
  # coalesce to the latest level.
}

interface Control {
  setPolicy @0 (policy :Policy, expectVersion :UInt64, dryRun :Bool) -> (version :UInt64, wouldDo :List(Event));
  # Validates the whole policy; an invalid one fails with an error naming the field and
  # the bound, and the previous policy stays in force. expectVersion (0 = don't check)
  # makes it a compare-and-set: if the version in force differs, nothing changes and the
  # call fails with "policy changed", so a read-modify-write cannot lose another's edit.
  # dryRun: a what-if. Nothing changes and nothing is persisted; a copy of the live core
  # takes the policy and one tick, and wouldDo is what it emitted (at most 1024 events,
  # seqs and ticks as the copy counted them); version is the version in force.

  getPolicy @1 () -> (policy :Policy, version :UInt64);

  events @2 (sinceSeq :UInt64, limit :UInt32) -> (events :List(Event), nextSeq :UInt64, missed :UInt64);
  # Events with seq > sinceSeq, oldest first, at most limit (1..1024). missed counts the
  # requested events already overwritten in the ring.

  subscribe @3 (sinceSeq :UInt64, subscriber :EventSubscriber) -> (subscription :Subscription);
  # Push every event with seq > sinceSeq to subscriber, with flow control.

  inject @4 (appId :Text, bytes :UInt64) -> (totalBytes :UInt64);
  # Test only: refused unless oomd runs with --enable-inject. Reaches the subject's
  # TestHook. bytes: 1..1 GiB.

  status @5 () -> (status :Status);

  lastReboot @6 () -> (record :RebootRecord);

  watchLevels @7 (watcher :LevelWatcher) -> (level :PressureLevel, subscription :Subscription);

  requestReboot @8 (reason :RebootReason) -> ();
  # Claims the halt token and runs the teardown. Fails if the token is already claimed.

  audit @9 (sinceSeq :UInt64, limit :UInt32) -> (entries :List(JournalEntry), nextSeq :UInt64, missed :UInt64);
  # Reads logd's journal through oomd (for oomctl).
}
