// Package obs is kas's observability plumbing: structured logging with IDs
// taken from the context, the request-ID middleware, Prometheus metrics, and
// the handler of the observability port (/metrics, /livez, /readyz,
// /debug/pprof/).
package obs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
)

// Log formats.
const (
	// FormatAuto (or "") is tint on a terminal, JSON otherwise.
	FormatAuto = "auto"
	FormatJSON = "json"
	// FormatText is human-readable text (tint; colours only on a terminal).
	FormatText = "text"
)

// ParseLevel parses debug, info, warn or error ("" is info).
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
}

// CheckFormat checks a log format name.
func CheckFormat(s string) error {
	switch s {
	case "", FormatAuto, FormatJSON, FormatText:
		return nil
	}
	return fmt.Errorf("%q is not one of auto, json, text", s)
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// NewLogger returns a logger writing to w at level in format. terminal says
// whether w is a terminal (it picks tint for FormatAuto and turns colours
// on). Records carry the IDs found in their context (see ContextHandler).
func NewLogger(w io.Writer, level, format string, terminal bool) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	return NewLoggerLevel(w, lvl, format, terminal)
}

// NewLoggerLevel is NewLogger with the level given as a slog.Leveler: a
// *slog.LevelVar lets the program change it at run time.
func NewLoggerLevel(w io.Writer, lvl slog.Leveler, format string, terminal bool) (*slog.Logger, error) {
	if err := CheckFormat(format); err != nil {
		return nil, fmt.Errorf("log format: %w", err)
	}
	var h slog.Handler
	if format == FormatJSON || (format != FormatText && !terminal) {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl})
	} else {
		h = tint.NewHandler(w, &tint.Options{Level: lvl, NoColor: !terminal, TimeFormat: "15:04:05.000"})
	}
	return slog.New(ContextHandler{h}), nil
}

type ctxKey int

const (
	requestIDKey ctxKey = iota
	nodeIDKey
	agentIDKey
)

// WithRequestID returns ctx carrying a request ID.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey, id)
}

// RequestID returns the request ID in ctx, or "".
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey).(string)
	return s
}

// WithNodeID returns ctx carrying a dataplane node ID.
func WithNodeID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, nodeIDKey, id)
}

// NodeID returns the node ID in ctx, or "".
func NodeID(ctx context.Context) string {
	s, _ := ctx.Value(nodeIDKey).(string)
	return s
}

// WithAgentID returns ctx carrying an agent ID.
func WithAgentID(ctx context.Context, id int64) context.Context {
	return context.WithValue(ctx, agentIDKey, id)
}

// AgentID returns the agent ID in ctx and whether there is one.
func AgentID(ctx context.Context) (int64, bool) {
	id, ok := ctx.Value(agentIDKey).(int64)
	return id, ok
}

// ContextHandler adds request_id, node_id and agent_id from a record's
// context to the record. Use the *Context logging methods to pass it. Under
// a logger's WithGroup the IDs land inside the group, like any record attribute.
type ContextHandler struct {
	slog.Handler
}

// Handle adds the IDs and passes the record on.
func (h ContextHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	if id := NodeID(ctx); id != "" {
		r.AddAttrs(slog.String("node_id", id))
	}
	if id, ok := AgentID(ctx); ok {
		r.AddAttrs(slog.Int64("agent_id", id))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the wrapper around the derived handler.
func (h ContextHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return ContextHandler{h.Handler.WithAttrs(as)}
}

// WithGroup keeps the wrapper around the derived handler.
func (h ContextHandler) WithGroup(name string) slog.Handler {
	return ContextHandler{h.Handler.WithGroup(name)}
}
