package agent

import (
	"log/slog"
	"net/http"
	"sync"

	"github.com/kas-project/kas/internal/agentconfig"
	"github.com/kas-project/kas/internal/obs"
)

// configState is the agent configuration applied last. Every tunnel gets
// each version from its node, in any order: only a newer one is applied.
type configState struct {
	mu        sync.Mutex
	version   int64      // -1 before the first delivery, 0 for none
	baseLevel slog.Level // Options.LogLevel at New
}

// ConfigVersion returns the version of the agent configuration applied
// last: -1 before the nodes delivered one, 0 when the agent has none.
func (a *Agent) ConfigVersion() int64 {
	a.cfg.mu.Lock()
	defer a.cfg.mu.Unlock()
	return a.cfg.version
}

// serveConfig applies a configuration delivered by a node (package
// agentconfig).
func (a *Agent) serveConfig(w http.ResponseWriter, r *http.Request) {
	d, err := agentconfig.ReadDelivery(r)
	if err != nil {
		a.log.WarnContext(a.logCtx, "agent configuration delivery refused", "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s, err := agentconfig.ParseSettings(d.YAML)
	if err != nil {
		a.log.WarnContext(a.logCtx, "agent configuration not applied", "config_version", d.Version, "err", err)
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	level, levelErr := obs.ParseLevel(s.LogLevel)
	c := &a.cfg
	c.mu.Lock()
	defer c.mu.Unlock()
	if d.Version <= c.version {
		w.WriteHeader(http.StatusNoContent) // another tunnel brought it first
		return
	}
	c.version = d.Version
	if a.o.LogLevel != nil {
		switch {
		case s.LogLevel == "":
			a.o.LogLevel.Set(c.baseLevel)
		case levelErr == nil:
			a.o.LogLevel.Set(level)
		}
	}
	switch {
	case d.Version == 0:
		a.log.InfoContext(a.logCtx, "this agent has no configuration in kas: using defaults (Rails, or kasctl config put, stores one)")
	case levelErr != nil:
		a.log.WarnContext(a.logCtx, "agent configuration applied, but its log level is not one agentk knows; kept the current one",
			"config_version", d.Version, "err", levelErr)
	default:
		a.log.InfoContext(a.logCtx, "agent configuration applied", "config_version", d.Version,
			"log_level", orDefault(s.LogLevel, "--log-level"))
	}
	w.WriteHeader(http.StatusNoContent)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
