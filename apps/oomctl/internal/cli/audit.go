package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// auditView is one journal entry in --json: logd's seq and writer, and the record's
// fields under their schema names. Add fields, never rename one.
type auditView struct {
	Seq       uint64 `json:"seq"`
	Writer    string `json:"writer"`
	WriterSeq uint64 `json:"writerSeq"`
	Tick      uint64 `json:"tick"`
	Kind      string `json:"kind"`
	Subject   string `json:"subject"`
	Instance  uint64 `json:"instance"`
	Bytes     uint64 `json:"bytes"`
	Limit     uint64 `json:"limit"`
	Decision  uint64 `json:"decision"`
	Reason    string `json:"reason"`
	// AppendedAtNs is when logd appended it (Unix ns; 0 = unknown, an older logd).
	AppendedAtNs int64 `json:"appendedAtNs"`
	// TracePos is where the inputs that led to it end in oomd's live trace
	// ("<file>:<offset>", for oomctl replay; "" = none).
	TracePos string `json:"tracePos"`
}

// formatAudit renders an entry as one line in the style of policy.FormatEvent's Human
// form: logd's append time first when known, fixed order, zero fields left out, sizes
// in human units.
func formatAudit(a auditView) string {
	var b strings.Builder
	if a.AppendedAtNs != 0 {
		b.WriteString(wallTime(a.AppendedAtNs) + " ")
	}
	fmt.Fprintf(&b, "seq=%d writer=%s writerSeq=%d tick=%d %s", a.Seq, a.Writer, a.WriterSeq, a.Tick, a.Kind)
	if a.Subject != "" {
		b.WriteString(" subject=" + a.Subject)
	}
	if a.Instance != 0 {
		fmt.Fprintf(&b, " instance=%d", a.Instance)
	}
	for _, f := range []struct {
		k string
		v uint64
	}{{"bytes", a.Bytes}, {"limit", a.Limit}} {
		if f.v != 0 {
			fmt.Fprintf(&b, " %s=%s", f.k, policy.CompactBytes(f.v))
		}
	}
	if a.Decision != 0 {
		fmt.Fprintf(&b, " decision=%d", a.Decision)
	}
	if a.Reason != "" {
		b.WriteString(" reason=" + a.Reason)
	}
	if a.TracePos != "" {
		b.WriteString(" trace=" + a.TracePos)
	}
	return b.String()
}

func auditViewOf(e wire.JournalEntry) auditView {
	r := e.Record
	return auditView{
		Seq: e.Seq, Writer: e.Writer, WriterSeq: r.WriterSeq, Tick: r.Tick,
		Kind: enumName(r.Kind.String(), uint16(r.Kind)), Subject: r.Subject, Instance: r.Instance,
		Bytes: r.Bytes, Limit: r.Limit, Decision: r.Decision, Reason: r.Reason, AppendedAtNs: e.AppendedAtNs,
		TracePos: r.TracePos,
	}
}

func (r *runner) audit(ctx context.Context, f *pageFlags) error {
	return r.withOomd(ctx, func(ctx context.Context, c *ctlclient.Client) error {
		p := &printer{w: r.env.Stdout, json: r.g.json, limit: f.limit, what: "rotated out of logd's journal"}
		return printPages(p, f.since, func(since uint64, limit uint32) ([]auditView, uint64, uint64, error) {
			entries, next, missed, err := readAudit(ctx, c, since, limit)
			return entries, next, missed, r.explain(err)
		}, p.audit)
	})
}

func (p *printer) audit(a auditView) error {
	p.printed++
	if p.json {
		return jsonLine(p.w, a)
	}
	_, err := io.WriteString(p.w, formatAudit(a)+"\n")
	return err
}

func readAudit(ctx context.Context, c *ctlclient.Client, since uint64, limit uint32) ([]auditView, uint64, uint64, error) {
	entries, next, missed, err := c.ReadAudit(ctx, since, limit)
	if err != nil {
		return nil, 0, 0, err
	}
	out := make([]auditView, len(entries))
	for i, e := range entries {
		out[i] = auditViewOf(e)
	}
	return out, next, missed, nil
}
