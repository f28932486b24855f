package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/controlplane/agentcfg"
	"github.com/kas-project/kas/controlplane/store"
)

// fieldError is a problem with one request field: InvalidArgument.
type fieldError struct {
	field string
	msg   string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// invalid returns an InvalidArgument error naming field.
func invalid(field, format string, args ...any) error {
	return &fieldError{field: field, msg: fmt.Sprintf(format, args...)}
}

// toConnect is the one place where domain errors become Connect codes.
// Unexpected errors are logged with the request's context and reach the
// caller only as "internal error".
func (s *Server) toConnect(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	var fe *fieldError
	var ve *agentcfg.ValidationError
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.As(err, &fe):
		return connect.NewError(connect.CodeInvalidArgument, fe)
	case errors.As(err, &ve):
		return connect.NewError(connect.CodeInvalidArgument, ve)
	case store.IsBadText(err):
		return connect.NewError(connect.CodeInvalidArgument, errors.New("text contains bytes Postgres cannot store (NUL or invalid UTF-8)"))
	case errors.Is(err, store.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, store.ErrAlreadyExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, store.ErrStale):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	}
	s.log.ErrorContext(ctx, "request failed", "op", op, "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// logAttrs is a helper for consistent log records.
func errAttr(err error) slog.Attr { return slog.Any("err", err) }
