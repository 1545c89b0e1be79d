package ctlclient

import (
	"context"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// GetPolicy returns the policy in force and its version.
func (c *Client) GetPolicy(ctx context.Context) (policy.Policy, uint64, error) {
	f, rel := c.Ctl.GetPolicy(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return policy.Policy{}, 0, fmt.Errorf("getPolicy: %w", err)
	}
	src, err := res.Policy()
	if err != nil {
		return policy.Policy{}, 0, fmt.Errorf("getPolicy: %w", err)
	}
	p, err := wire.Policy(src)
	if err != nil {
		return p, 0, fmt.Errorf("getPolicy: oomd returned a policy that does not validate: %w", err)
	}
	return p, res.Version(), nil
}

// SetPolicy sends p as is (oomd validates it whole) and returns the new version. An
// invalid policy comes back as oomd's error naming the field and the bound.
func (c *Client) SetPolicy(ctx context.Context, p policy.Policy) (uint64, error) {
	return c.SetPolicyIf(ctx, p, 0)
}

// SetPolicyIf is SetPolicy as a compare-and-set: oomd applies p only if expectVersion
// (the version a GetPolicy returned) is still in force, and fails with "policy changed"
// otherwise. Use it for read-modify-write.
func (c *Client) SetPolicyIf(ctx context.Context, p policy.Policy, expectVersion uint64) (uint64, error) {
	res, rel, err := c.setPolicy(ctx, p, expectVersion, false)
	defer rel()
	if err != nil {
		return 0, err
	}
	return res.Version(), nil
}

// setPolicy makes one setPolicy call; release the results with rel.
func (c *Client) setPolicy(ctx context.Context, p policy.Policy, expectVersion uint64, dryRun bool) (oomdpb.Control_setPolicy_Results, capnp.ReleaseFunc, error) {
	f, rel := c.Ctl.SetPolicy(ctx, func(a oomdpb.Control_setPolicy_Params) error {
		a.SetExpectVersion(expectVersion)
		a.SetDryRun(dryRun)
		dst, err := a.NewPolicy()
		if err != nil {
			return err
		}
		return wire.SetPolicy(dst, p)
	})
	res, err := f.Struct()
	if err != nil {
		return res, rel, fmt.Errorf("setPolicy: %w", err)
	}
	return res, rel, nil
}

// WhatIf asks oomd what p would do now against the live state, changing nothing
// (setPolicy with dryRun): the events a copy of its core emitted taking p and one tick,
// and the version in force.
func (c *Client) WhatIf(ctx context.Context, p policy.Policy) ([]policy.Event, uint64, error) {
	res, rel, err := c.setPolicy(ctx, p, 0, true)
	defer rel()
	if err != nil {
		return nil, 0, err
	}
	l, err := res.WouldDo()
	if err != nil {
		return nil, 0, fmt.Errorf("setPolicy (what-if): wouldDo: %w", err)
	}
	evs, err := wire.Events(l)
	if err != nil {
		return nil, 0, fmt.Errorf("setPolicy (what-if): %w", err)
	}
	return evs, res.Version(), nil
}

// ReadEvents returns one page of oomd's event ring after since (limit 1..1024), the
// seq to continue from, and how many requested events were already overwritten.
func (c *Client) ReadEvents(ctx context.Context, since uint64, limit uint32) (evs []policy.Event, next, missed uint64, err error) {
	f, rel := c.Ctl.Events(ctx, func(p oomdpb.Control_events_Params) error {
		p.SetSinceSeq(since)
		p.SetLimit(limit)
		return nil
	})
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("events: %w", err)
	}
	if evs, missed, err = wire.ReadEventBatch(res); err != nil {
		return nil, 0, 0, fmt.Errorf("events: %w", err)
	}
	return evs, res.NextSeq(), missed, nil
}

// ReadAudit returns one page of logd's journal after since (limit 1..1024), the seq to
// continue from, and how many requested entries were already rotated away.
func (c *Client) ReadAudit(ctx context.Context, since uint64, limit uint32) (out []wire.JournalEntry, next, missed uint64, err error) {
	f, rel := c.Ctl.Audit(ctx, func(p oomdpb.Control_audit_Params) error {
		p.SetSinceSeq(since)
		p.SetLimit(limit)
		return nil
	})
	defer rel()
	res, err := f.Struct()
	if out, err = decode("audit", res, err, oomdpb.Control_audit_Results.Entries, wire.ReadJournalEntries); err != nil {
		return nil, 0, 0, err
	}
	return out, res.NextSeq(), res.Missed(), nil
}

// pages calls read from since until a page comes back empty or no further, handing
// every page to visit; visit returns false to stop early.
func pages[T any](since uint64, read func(since uint64) ([]T, uint64, error), visit func([]T) bool) error {
	for {
		page, next, err := read(since)
		if err != nil {
			return err
		}
		if !visit(page) || len(page) == 0 || next <= since {
			return nil
		}
		since = next
	}
}

// LastReboot returns the reboot record the previous boot left, as oomd read it at start.
func (c *Client) LastReboot(ctx context.Context) (wire.RebootRecord, error) {
	f, rel := c.Ctl.LastReboot(ctx, nil)
	defer rel()
	res, err := f.Struct()
	return decode("lastReboot", res, err, oomdpb.Control_lastReboot_Results.Record, wire.ReadRebootRecord)
}

// Status returns oomd's status.
func (c *Client) Status(ctx context.Context) (wire.Status, error) {
	f, rel := c.Ctl.Status(ctx, nil)
	defer rel()
	res, err := f.Struct()
	return decode("status", res, err, oomdpb.Control_status_Results.Status, wire.ReadStatus)
}

// decode reads what a call answered (res, or the call's error err): the struct get
// takes from its results, through wire's reader read. Errors name the call.
func decode[R, S, T any](call string, res R, err error, get func(R) (S, error), read func(S) (T, error)) (T, error) {
	var v T
	if err != nil {
		return v, fmt.Errorf("%s: %w", call, err)
	}
	src, err := get(res)
	if err != nil {
		return v, fmt.Errorf("%s: %w", call, err)
	}
	if v, err = read(src); err != nil {
		return v, fmt.Errorf("%s: %w", call, err)
	}
	return v, nil
}
