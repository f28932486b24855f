package dataplane

import (
	"context"
	"crypto/rand"

	"connectrpc.com/connect"
)

// idempotencyKeyHeader marks a call as safe to send again. Every method of
// the dataplane API is idempotent by design: registrations and heartbeats
// replace, tunnel reports are fenced by boot ID and sequence, and the
// rest only read. With the header, net/http resends a call whose
// keep-alive connection the control plane closed just as the call went
// out (a replica shutting down in a rolling restart) instead of failing
// it; without it, it resends only GET and HEAD.
const idempotencyKeyHeader = "Idempotency-Key"

// idempotencyKeys gives each unary call a key of its own, as the header's
// users expect: a retry of the call carries the same key, another call
// never does.
func idempotencyKeys() connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if req.Spec().IsClient && req.Header().Get(idempotencyKeyHeader) == "" {
				req.Header().Set(idempotencyKeyHeader, rand.Text())
			}
			return next(ctx, req)
		}
	})
}
