package agent

import (
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kas-project/kas/internal/agentconfig"
)

// TestConfigDelivery: a node's delivery sets the log level and the
// version; an older or repeated one changes nothing; a configuration
// without a level returns to --log-level; a caller's PUT to the same path
// without the node's header goes to the Kubernetes API like any request.
func TestConfigDelivery(t *testing.T) {
	var upstreamHits atomic.Int32
	level := new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		http.NotFound(w, r)
	}), func(o *Options, _ *fakeNode) { o.LogLevel = level })
	c := h.node.nextTunnel(t).client()
	if v := h.a.ConfigVersion(); v != -1 {
		t.Fatalf("ConfigVersion before any delivery = %d, want -1", v)
	}
	deliver := func(version int64, yaml string) int {
		t.Helper()
		req, err := agentconfig.NewRequest(t.Context(), version, yaml)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	steps := []struct {
		version int64
		yaml    string
		status  int
		level   slog.Level
		applied int64
	}{
		{0, "", http.StatusNoContent, slog.LevelWarn, 0},
		{2, "observability:\n  logging:\n    level: debug\n", http.StatusNoContent, slog.LevelDebug, 2},
		{1, "observability: {logging: {level: error}}\n", http.StatusNoContent, slog.LevelDebug, 2}, // older: ignored
		{2, "observability: {logging: {level: error}}\n", http.StatusNoContent, slog.LevelDebug, 2}, // repeated: ignored
		{3, "ci_access: {}\n", http.StatusNoContent, slog.LevelWarn, 3},                             // no level: back to the flag's
		{4, "observability: [\n", http.StatusUnprocessableEntity, slog.LevelWarn, 3},
	}
	for _, s := range steps {
		if got := deliver(s.version, s.yaml); got != s.status {
			t.Errorf("version %d: status %d, want %d", s.version, got, s.status)
		}
		if got := level.Level(); got != s.level {
			t.Errorf("after version %d: level %v, want %v", s.version, got, s.level)
		}
		if got := h.a.ConfigVersion(); got != s.applied {
			t.Errorf("after version %d: ConfigVersion %d, want %d", s.version, got, s.applied)
		}
	}
	if upstreamHits.Load() != 0 {
		t.Errorf("deliveries reached the Kubernetes API %d times", upstreamHits.Load())
	}
	req, _ := http.NewRequest(http.MethodPut, "http://agent"+agentconfig.Path, strings.NewReader("observability: {logging: {level: debug}}"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || upstreamHits.Load() != 1 || h.a.ConfigVersion() != 3 {
		t.Errorf("PUT without the header: %d, upstream hits %d, version %d; want the API's 404, 1, 3", resp.StatusCode, upstreamHits.Load(), h.a.ConfigVersion())
	}
	for _, want := range []string{"has no configuration in kas", `"config_version":2`, `"log_level":"debug"`} {
		if !strings.Contains(h.logs.String(), want) {
			t.Errorf("logs lack %q", want)
		}
	}
}
