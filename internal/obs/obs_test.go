package obs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestLoggerAddsIDsFromContext(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "debug", FormatJSON, false)
	if err != nil {
		t.Fatal(err)
	}
	ctx := WithAgentID(WithNodeID(WithRequestID(context.Background(), "req-1"), "node-a"), 42)
	log.With("component", "test").InfoContext(ctx, "hello", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v: %s", err, buf.String())
	}
	want := map[string]any{"msg": "hello", "k": "v", "component": "test", "request_id": "req-1", "node_id": "node-a", "agent_id": float64(42), "level": "INFO"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("record[%q] = %v, want %v (record %s)", k, rec[k], v, buf.String())
		}
	}
	buf.Reset()
	log.Info("no context")
	if strings.Contains(buf.String(), "request_id") || strings.Contains(buf.String(), "agent_id") {
		t.Errorf("a record without IDs in its context got some: %s", buf.String())
	}
}

func TestLoggerLevelAndFormat(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "warn", FormatText, false)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.WarnContext(WithRequestID(context.Background(), "r9"), "shown")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, "shown") || !strings.Contains(out, "request_id=r9") {
		t.Errorf("text log at warn = %q", out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("colours on a non-terminal: %q", out)
	}
	buf.Reset()
	// Automatic format: JSON when not a terminal.
	log, _ = NewLogger(&buf, "", FormatAuto, false)
	log.Info("x")
	if !json.Valid(buf.Bytes()) {
		t.Errorf("auto format off a terminal is not JSON: %q", buf.String())
	}

	if _, err := NewLogger(io.Discard, "loud", "", false); err == nil || !strings.Contains(err.Error(), `log level: "loud" is not one of debug, info, warn, error`) {
		t.Errorf("bad level: err = %v", err)
	}
	if _, err := NewLogger(io.Discard, "", "xml", false); err == nil || !strings.Contains(err.Error(), `log format: "xml" is not one of auto, json, text`) {
		t.Errorf("bad format: err = %v", err)
	}
}

func TestRequestIDs(t *testing.T) {
	var seen string
	h := RequestIDs(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = RequestID(r.Context())
	}))
	for _, tc := range []struct {
		name, in string
		keep     bool
	}{
		{"caller's ID kept", "abc-123_x.y:z", true},
		{"missing", "", false},
		{"spaces", "a b", false},
		{"too long", strings.Repeat("a", 129), false},
		{"control characters", "a\x01b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			if tc.in != "" {
				req.Header.Set(RequestIDHeader, tc.in)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			out := rec.Header().Get(RequestIDHeader)
			if out == "" || out != seen {
				t.Fatalf("response ID %q, context ID %q: want equal and non-empty", out, seen)
			}
			if tc.keep != (out == tc.in) {
				t.Errorf("in %q, out %q, keep=%v", tc.in, out, tc.keep)
			}
			if !tc.keep && len(out) != 32 {
				t.Errorf("generated ID %q is not 32 hex digits", out)
			}
		})
	}
}

func TestHandler(t *testing.T) {
	reg := NewRegistry()
	var readyErr error
	srv := httptest.NewServer(Handler(Options{
		Registry: reg,
		Ready:    func(context.Context) error { return readyErr },
	}))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/livez"); code != 200 || body != "ok\n" {
		t.Errorf("/livez = %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz when ready = %d %q", code, body)
	}
	readyErr = errors.New("database: connection refused")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "not ready: database: connection refused") {
		t.Errorf("/readyz when not ready = %d %q", code, body)
	}
	if code, body := get("/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ = %d", code)
	}

	app := httptest.NewServer(HTTPMetrics(reg, "controlplane", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})))
	defer app.Close()
	resp, err := http.Post(app.URL+"/x", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		"go_goroutines ",
		`kas_http_requests_total{code="418",method="post",server="controlplane"} 1`,
		`kas_http_request_duration_seconds_count{server="controlplane"} 1`,
		`kas_http_requests_in_flight{server="controlplane"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
