package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Where `kas all` keeps the key kasctl signs with: .kas/secrets next to
// the embedded database's default data directory, or /var/lib/kas/secrets
// when, as root, the postgres user could not reach the default one.
var defaultKeyFiles = []string{
	filepath.Join(".kas", "secrets", "api_secret_key"),
	filepath.Join("/var/lib/kas", "secrets", "api_secret_key"),
}

// defaultKeyFile returns the first of defaultKeyFiles that exists, or "".
func defaultKeyFile() string {
	for _, p := range defaultKeyFiles {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// codedError is an error with its own exit code.
type codedError interface {
	error
	ExitCode() int
}

// exitError is a failed command: one line, and its exit code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) ExitCode() int { return e.code }

// notFound says that what the command names does not exist (exit 3).
func notFound(format string, args ...any) error {
	return &exitError{code: ExitNotFound, msg: fmt.Sprintf(format, args...)}
}

// parseArgs parses flags and positional arguments in any order (Go's flag
// package stops at the first positional one) and returns the positional
// arguments. "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseIDs parses positional arguments as positive IDs of what.
func parseIDs(what string, args []string) ([]int64, error) {
	var out []int64
	for _, a := range args {
		for _, f := range strings.Split(a, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			id, err := strconv.ParseInt(f, 10, 64)
			if err != nil || id <= 0 {
				return nil, usageError{fmt.Sprintf("%q is not %s ID (a positive number)", f, what)}
			}
			out = append(out, id)
		}
	}
	return out, nil
}

// oneID returns the single ID argument of cmd, e.g. `kasctl agents get 42`.
func oneID(cmd, what string, args []string) (int64, error) {
	if len(args) != 1 {
		return 0, usageError{fmt.Sprintf("%s: give one %s ID, e.g. kasctl %s 42", cmd, what, cmd)}
	}
	ids, err := parseIDs("an "+what, args)
	if err != nil {
		return 0, err
	}
	if len(ids) != 1 {
		return 0, usageError{fmt.Sprintf("%s: give one %s ID, e.g. kasctl %s 42", cmd, what, cmd)}
	}
	return ids[0], nil
}

// noArgs refuses positional arguments.
func noArgs(cmd string, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", cmd, args[0])}
	}
	return nil
}

// idList is a repeatable flag of IDs; each value may be a comma-separated
// list.
type idList []int64

func (l *idList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, id := range *l {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, ",")
}

func (l *idList) Set(v string) error {
	ids, err := parseIDs("an", []string{v})
	if err != nil {
		return errors.New("not a list of positive IDs")
	}
	*l = append(*l, ids...)
	return nil
}

// stringList is a repeatable flag of strings; each value may be a
// comma-separated list.
type stringList []string

func (l *stringList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

func (l *stringList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*l = append(*l, f)
		}
	}
	return nil
}

// required returns "--name is required" style usage errors for the flags
// whose check failed, in order; nil when none did.
func required(checks ...any) error {
	var missing []string
	for i := 0; i+1 < len(checks); i += 2 {
		if !checks[i+1].(bool) {
			missing = append(missing, checks[i].(string))
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return usageError{missing[0] + " is required"}
	}
	return usageError{strings.Join(missing[:len(missing)-1], ", ") + " and " + missing[len(missing)-1] + " are required"}
}

// session is one command's connection to the control plane.
type session struct {
	*clients
	g   *globals
	fs  *flag.FlagSet
	ctx context.Context
}

// dial checks the global flags and builds the clients; its context is
// bounded by --timeout. Call the returned cancel when done.
func (g *globals) dial(ctx context.Context, fs *flag.FlagSet) (*session, context.CancelFunc, error) {
	if err := g.check(); err != nil {
		return nil, nil, err
	}
	if _, _, err := httpClient(g.server); err != nil {
		return nil, nil, usageError{"--server: " + err.Error()}
	}
	c, err := g.connect()
	if err != nil {
		return nil, nil, &exitError{code: ExitError, msg: err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	return &session{clients: c, g: g, fs: fs, ctx: ctx}, cancel, nil
}

// fail words a failed call in one line that says what to fix, with the
// exit code scripts rely on: 3 for not found, 1 otherwise.
func (s *session) fail(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return &exitError{code: ExitError, msg: err.Error()}
	}
	msg := ce.Message()
	switch ce.Code() {
	case connect.CodeUnavailable:
		return &exitError{code: ExitError, msg: fmt.Sprintf("cannot reach the control plane at %s (is kas running? set --server)", s.g.server)}
	case connect.CodeUnauthenticated:
		return &exitError{code: ExitError, msg: fmt.Sprintf("the control plane at %s refused the call's signature: is --api-secret-key-file (%s) its api_secret_key?", s.g.server, s.g.apiKeyFile)}
	case connect.CodePermissionDenied:
		return &exitError{code: ExitError, msg: "the control plane refused the call: " + msg}
	case connect.CodeNotFound:
		// "agent 42: not found" → "agent 42 not found".
		return notFound("%s", strings.Replace(msg, ": not found", " not found", 1))
	case connect.CodeInvalidArgument:
		return &exitError{code: ExitError, msg: s.fieldToFlag(msg)}
	case connect.CodeAlreadyExists, connect.CodeFailedPrecondition:
		return &exitError{code: ExitError, msg: msg}
	case connect.CodeDeadlineExceeded:
		return &exitError{code: ExitError, msg: fmt.Sprintf("the control plane at %s did not answer within --timeout %v", s.g.server, s.g.timeout)}
	case connect.CodeCanceled:
		return &exitError{code: ExitError, msg: "canceled"}
	case connect.CodeInternal:
		return &exitError{code: ExitError, msg: fmt.Sprintf("the control plane at %s failed (%s); its log has the details", s.g.server, msg)}
	}
	return &exitError{code: ExitError, msg: fmt.Sprintf("the control plane at %s answered %s: %s", s.g.server, ce.Code(), msg)}
}

// fieldFlags maps request fields to the flags that set them where the
// names differ.
var fieldFlags = map[string]string{"expires_at": "expires_in"}

// fieldToFlag rewrites the control plane's "field: problem" (a request
// field) as "--flag: problem" when the command has that flag:
// "project_id" → --project-id, "user.username" → --username.
func (s *session) fieldToFlag(msg string) string {
	field, problem, ok := strings.Cut(msg, ": ")
	if !ok || s.fs == nil || strings.ContainsAny(field, " \t") {
		return msg
	}
	base := field
	if i := strings.IndexByte(base, '['); i >= 0 {
		base = base[:i]
	}
	if f, ok := fieldFlags[base]; ok {
		base = f
	}
	candidates := []string{strings.NewReplacer("_", "-", ".", "-").Replace(base)}
	if i := strings.LastIndexByte(base, '.'); i >= 0 {
		candidates = append(candidates, strings.ReplaceAll(base[i+1:], "_", "-"))
	}
	// Repeated fields: agent_ids → --agent-id, group_paths → --group-path.
	for _, c := range candidates {
		for _, name := range []string{c, strings.TrimSuffix(c, "s")} {
			if s.fs.Lookup(name) != nil {
				return "--" + name + ": " + problem
			}
		}
	}
	return msg
}

// out writes a command's result in the chosen format: json is the
// response as protojson; table calls table with a tabwriter; id prints
// ids, one per line.
func (s *session) out(w io.Writer, resp proto.Message, table func(*tabwriter.Writer), ids ...int64) error {
	return printResult(w, s.g.output, resp, table, ids...)
}

func printResult(w io.Writer, format string, resp proto.Message, table func(*tabwriter.Writer), ids ...int64) error {
	switch format {
	case outputJSON:
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(resp)
		if err != nil {
			return fmt.Errorf("encode the response as JSON: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case outputID:
		for _, id := range ids {
			if _, err := fmt.Fprintln(w, id); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// row writes one table row of cells.
func row(tw *tabwriter.Writer, cells ...any) {
	for i, c := range cells {
		if i > 0 {
			tw.Write([]byte{'\t'})
		}
		fmt.Fprint(tw, c)
	}
	tw.Write([]byte{'\n'})
}

// when formats a timestamp for tables: UTC, to the second; "-" when unset.
func when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// orDash returns s, or "-" when it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// joinIDs formats IDs as "1,2,3".
func joinIDs(ids []int64) string {
	if len(ids) == 0 {
		return "-"
	}
	l := idList(ids)
	return l.String()
}
