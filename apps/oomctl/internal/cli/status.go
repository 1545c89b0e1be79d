package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/wire"
)

// statusView is oomd's Status as oomctl prints it. The JSON names are the schema's and
// are part of oomctl's interface to scripts: add fields, never rename one.
type statusView struct {
	Tick              uint64        `json:"tick"`
	PolicyVersion     uint64        `json:"policyVersion"`
	LastEventSeq      uint64        `json:"lastEventSeq"`
	Kills             uint64        `json:"kills"`
	Denied            uint64        `json:"denied"`
	Throttled         uint64        `json:"throttled"`
	AcceptedSamples   uint64        `json:"acceptedSamples"`
	RejectedSamples   uint64        `json:"rejectedSamples"`
	Level             string        `json:"level"`
	MemAvailableBytes uint64        `json:"memAvailableBytes"`
	HaltClaimed       bool          `json:"haltClaimed"`
	InjectEnabled     bool          `json:"injectEnabled"`
	Truncated         bool          `json:"truncated"`
	Subjects          []subjectView `json:"subjects"`
	// The pressure victim oomd would pick now, why, and what holds it back ("" = the
	// next tick at the victim level decides); all empty when no subject is a candidate.
	Victim       string `json:"victim"`
	VictimReason string `json:"victimReason"`
	VictimHold   string `json:"victimHold"`
	// This oomd run: its events have seqs above EventSeqBase; its ticks count from 0 at
	// StartedAtNs (Unix ns, wall clock).
	EventSeqBase uint64 `json:"eventSeqBase"`
	StartedAtNs  int64  `json:"startedAtNs"`
	// The audit trail: records not yet durable (kills wait for theirs), logd not
	// connected, records in oomd's spill file.
	AuditWaiting  uint64 `json:"auditWaiting"`
	AuditLogdDown bool   `json:"auditLogdDown"`
	AuditSpilled  uint64 `json:"auditSpilled"`
}

type subjectView struct {
	Subject   string `json:"subject"`
	Instance  uint64 `json:"instance"`
	State     string `json:"state"`
	Bytes     uint64 `json:"bytes"`
	SoftBytes uint64 `json:"softBytes"`
	HardBytes uint64 `json:"hardBytes"`
	Critical  bool   `json:"critical"`
	Rejected  uint64 `json:"rejected"`
	// Both readings, which one the limits apply to, and how the subject is contained
	// ("proc" is the weaker /proc process-tree fallback; "none": no kernel reading).
	KernelBytes      uint64 `json:"kernelBytes"`
	CooperativeBytes uint64 `json:"cooperativeBytes"`
	Published        bool   `json:"published"`
	Signal           string `json:"signal"`
	CgroupMode       string `json:"cgroupMode"`
}

func (r *runner) status(ctx context.Context) error {
	return r.withOomd(ctx, func(ctx context.Context, c *ctlclient.Client) error {
		st, err := c.Status(ctx)
		if err != nil {
			return r.explain(err)
		}
		v := statusViewOf(st)
		if r.g.json {
			return jsonLine(r.env.Stdout, v)
		}
		return writeStatus(r.env.Stdout, v)
	})
}

func statusViewOf(st wire.Status) statusView {
	v := statusView{
		Tick: st.Tick, PolicyVersion: st.PolicyVersion, LastEventSeq: st.LastEventSeq,
		Kills: st.Kills, Denied: st.Denied, Throttled: st.Throttled,
		AcceptedSamples: st.AcceptedSamples, RejectedSamples: st.RejectedSamples,
		Level:             enumName(st.Level.String(), uint16(st.Level)),
		MemAvailableBytes: st.MemAvailableBytes, HaltClaimed: st.HaltClaimed,
		InjectEnabled: st.InjectEnabled, Truncated: st.Truncated,
		Victim: st.Victim, VictimReason: st.VictimReason, VictimHold: st.VictimHold,
		EventSeqBase: st.EventSeqBase, StartedAtNs: st.StartedAtNs,
		AuditWaiting: st.AuditWaiting, AuditLogdDown: st.AuditLogdDown, AuditSpilled: st.AuditSpilled,
		Subjects: make([]subjectView, 0, len(st.Subjects)),
	}
	for _, s := range st.Subjects {
		v.Subjects = append(v.Subjects, subjectView{
			Subject: s.Subject, Instance: s.Instance, State: enumName(s.State.String(), uint16(s.State)),
			Bytes: s.Bytes, SoftBytes: s.SoftBytes, HardBytes: s.HardBytes,
			Critical: s.Critical, Rejected: s.Rejected,
			KernelBytes: s.KernelBytes, CooperativeBytes: s.CooperativeBytes, Published: s.Published,
			Signal:     enumName(s.Signal.String(), uint16(s.Signal)),
			CgroupMode: enumName(s.CgroupMode.String(), uint16(s.CgroupMode)),
		})
	}
	// oomd sends them sorted; sort anyway so the table's order never depends on it.
	slices.SortFunc(v.Subjects, func(a, b subjectView) int { return strings.Compare(a.Subject, b.Subject) })
	return v
}

// writeStatus prints a summary and one aligned row per subject.
func writeStatus(w io.Writer, v statusView) error {
	fmt.Fprintf(w, "tick %d, policy version %d, last event seq %d\n", v.Tick, v.PolicyVersion, v.LastEventSeq)
	if v.StartedAtNs != 0 {
		fmt.Fprintf(w, "this oomd run: started %s (tick 0), its events have seq > %d\n", wallTime(v.StartedAtNs), v.EventSeqBase)
	}
	fmt.Fprintf(w, "kills %d, denied %d, throttled %d; samples accepted %d, rejected %d\n",
		v.Kills, v.Denied, v.Throttled, v.AcceptedSamples, v.RejectedSamples)
	switch {
	case v.AuditLogdDown && v.AuditSpilled == 0:
		fmt.Fprintf(w, "AUDIT: logd NOT CONNECTED, %d records waiting; kills wait until they are durable\n", v.AuditWaiting)
	case v.AuditLogdDown:
		fmt.Fprintf(w, "AUDIT: logd NOT CONNECTED; %d records in the spill file, %d waiting\n", v.AuditSpilled, v.AuditWaiting)
	case v.AuditSpilled > 0 || v.AuditWaiting > 0:
		fmt.Fprintf(w, "audit: logd connected; %d records in the spill file, %d waiting\n", v.AuditSpilled, v.AuditWaiting)
	}
	var notes []string
	if v.MemAvailableBytes != 0 || v.Level != "normal" {
		notes = append(notes, fmt.Sprintf("pressure level %s (MemAvailable %s)", v.Level, humanBytes(v.MemAvailableBytes)))
	}
	if v.HaltClaimed {
		notes = append(notes, "HALT CLAIMED (system OOM teardown under way)")
	}
	if v.InjectEnabled {
		notes = append(notes, "inject enabled (test mode)")
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, strings.Join(notes, "; "))
	}
	writeVictim(w, v)
	fmt.Fprintln(w)
	if len(v.Subjects) == 0 {
		fmt.Fprintln(w, "no subjects")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBJECT\tSTATE\tBYTES\tSOFT\tHARD\tSIGNAL\tKERNEL\tPUBLISHED\tCGROUP\tCRITICAL\tREJECTED")
	weak := false
	for _, s := range v.Subjects {
		kernel, published := "-", "-"
		if s.CgroupMode != "none" {
			kernel = humanBytes(s.KernelBytes)
		}
		if s.Published {
			published = humanBytes(s.CooperativeBytes)
		}
		weak = weak || s.CgroupMode == "proc"
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.Subject, s.State,
			humanBytes(s.Bytes), humanBytes(s.SoftBytes), humanBytes(s.HardBytes), s.Signal, kernel, published, s.CgroupMode,
			yesNo(s.Critical), s.Rejected)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if weak {
		fmt.Fprintln(w, "(cgroup proc: no writable memory cgroup; the /proc process tree is weaker: a process that leaves its group escapes)")
	}
	if v.Truncated {
		fmt.Fprintf(w, "(only the first %d subjects are shown: oomd bounds one status answer)\n", len(v.Subjects))
	}
	return nil
}

// writeVictim prints the victim preview, unless victim selection is off (by the policy,
// or because no pressure levels are set), which is the common case and says nothing.
func writeVictim(w io.Writer, v statusView) {
	switch {
	case v.Victim == "" || v.VictimHold == "victims off" || v.VictimHold == "levels off":
	case v.VictimHold == "":
		fmt.Fprintf(w, "victim %s: decided at the next tick (%s)\n", v.Victim, v.VictimReason)
	default:
		fmt.Fprintf(w, "victim would be %s (%s); held: %s\n", v.Victim, v.VictimReason, v.VictimHold)
	}
}
