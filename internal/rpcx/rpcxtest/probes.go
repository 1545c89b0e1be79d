package rpcxtest

import (
	"context"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
)

// ControlStatus is a real client call for Target.Probe: oomd's Control.status on a
// fresh connection to path.
func ControlStatus(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		conn, boot, err := rpcx.Dial(ctx, path, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		c := oomdpb.Control(boot)
		defer c.Release()
		f, rel := c.Status(ctx, nil)
		defer rel()
		_, err = f.Struct()
		return err
	}
}

// JournalStatus is a real client call for Target.Probe: logd's Journal.status on a
// fresh connection to path.
func JournalStatus(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		conn, boot, err := rpcx.Dial(ctx, path, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		j := oomdpb.Journal(boot)
		defer j.Release()
		f, rel := j.Status(ctx, nil)
		defer rel()
		_, err = f.Struct()
		return err
	}
}
