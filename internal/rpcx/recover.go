package rpcx

import (
	"context"
	"fmt"
	"runtime/debug"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"
	"go.uber.org/zap"
)

// ErrHandlerPanic is what a caller sees (as the exception's text) when the method it
// called panicked.
const ErrHandlerPanic = "internal error: the server method panicked (logged)"

// Recovering wraps every method so that a panic in it becomes an exception for that
// call instead of ending the process: go-capnp (v3.1.0-alpha.2) recovers nothing, and
// runs server methods on its own goroutines. The panic is logged with its stack.
//
//	c := oomdpb.Control(rpcx.Recovering(oomdpb.Control_Methods(nil, s), s, log))
//
// impl is the server value (its Shutdown, if it has one, runs as usual).
func Recovering(methods []server.Method, impl any, log *zap.Logger) capnp.Client {
	if log == nil {
		log = zap.NewNop()
	}
	for i := range methods {
		impl, m := methods[i].Impl, methods[i].Method
		methods[i].Impl = func(ctx context.Context, call *server.Call) (err error) {
			defer func() {
				if r := recover(); r != nil {
					log.Error("server method panicked; failing that call", zap.String("method", m.String()),
						zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
					err = fmt.Errorf("%s: %s", m.MethodName, ErrHandlerPanic)
				}
			}()
			return impl(ctx, call)
		}
	}
	shutdown, _ := impl.(server.Shutdowner)
	return capnp.NewClient(server.New(methods, impl, shutdown))
}
