package cli

import (
	"context"
	"fmt"
	"strings"

	"oomd.dev/oomd/services/oomd/ctlclient"
)

// rebootView is oomd's RebootRecord as oomctl prints it; JSON names are the schema's.
type rebootView struct {
	Valid      bool     `json:"valid"`
	Reason     string   `json:"reason"`
	Graceful   bool     `json:"graceful"`
	TeardownMs uint32   `json:"teardownMs"`
	NotStopped []string `json:"notStopped"`
	BootCount  uint64   `json:"bootCount"`
}

func (r *runner) lastReboot(ctx context.Context) error {
	return r.withOomd(ctx, func(ctx context.Context, c *ctlclient.Client) error {
		rec, err := c.LastReboot(ctx)
		if err != nil {
			return r.explain(err)
		}
		v := rebootView{Valid: rec.Valid, Reason: enumName(rec.Reason.String(), uint16(rec.Reason)),
			Graceful: rec.Graceful, TeardownMs: rec.TeardownMs, BootCount: rec.BootCount,
			NotStopped: append([]string{}, rec.NotStopped...)} // [], not null, in --json
		if r.g.json {
			return jsonLine(r.env.Stdout, v)
		}
		if !v.Valid {
			_, err := fmt.Fprintln(r.env.Stdout, "no reboot reason recorded (no earlier system OOM or reboot request, no record store, or its record was torn or corrupt)")
			return err
		}
		line := fmt.Sprintf("last reboot: reason=%s graceful=%s teardown=%d ms (written by boot %d)",
			v.Reason, yesNo(v.Graceful), v.TeardownMs, v.BootCount)
		if len(v.NotStopped) > 0 {
			line += "\nnot stopped in time: " + strings.Join(v.NotStopped, ", ")
		}
		_, err = fmt.Fprintln(r.env.Stdout, line)
		return err
	})
}
