package tests

import (
	"log/slog"
	"testing"
	"time"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/tests/framework"
)

// TestAgentConfigReachesConnectedAgents: an agent without configuration
// hears so when it connects; a configuration Rails stores reaches a
// connected agent (both replicas of it, through every node) within the
// poll interval and sets its log level; a newer one replaces it; a new
// tunnel gets the current version at once.
func TestAgentConfigReachesConnectedAgents(t *testing.T) {
	env := framework.StartControlPlane(t)
	fast := func(o *dataplane.Options) { o.ConfigPollInterval = 100 * time.Millisecond }
	a := framework.StartNode(t, env, "node-a", fast)
	b := framework.StartNode(t, env, "node-b", fast)
	creds := framework.CreateAgent(t, env, "configured")
	levels := []*slog.LevelVar{new(slog.LevelVar), new(slog.LevelVar)}
	var replicas []*framework.Agent
	for i, n := range []*framework.Node{a, b} {
		levels[i].Set(slog.LevelInfo)
		replicas = append(replicas, framework.StartAgent(t, creds, n.AgentURL, 1,
			func(o *agent.Options) { o.LogLevel = levels[i] }))
	}
	framework.WaitRouted(t, env, creds.ID, "node-a", "node-b")
	waitVersion := func(v int64, level slog.Level) {
		t.Helper()
		for i, r := range replicas {
			framework.Eventually(t, "replica configured", func() bool {
				return r.ConfigVersion() == v && levels[i].Level() == level
			})
		}
	}
	waitVersion(0, slog.LevelInfo)
	if replicas[0].Logs.Count("has no configuration in kas") == 0 {
		t.Error("an agent without configuration does not say so")
	}

	ctx := framework.Context(t)
	put := func(yaml string) int64 {
		t.Helper()
		resp, err := env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: creds.ID, Yaml: yaml})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Config.Version
	}
	v := put("observability:\n  logging:\n    level: debug\n")
	waitVersion(v, slog.LevelDebug)
	v = put("observability:\n  logging:\n    level: error\n")
	waitVersion(v, slog.LevelError)
	for _, r := range replicas {
		if r.Logs.Count("agent configuration applied") < 2 {
			t.Errorf("agent %d: applied configurations not logged", r.Creds.ID)
		}
	}

	// A third replica, connecting now, gets the current version on its tunnel.
	level := new(slog.LevelVar)
	late := framework.StartAgent(t, creds, a.AgentURL, 1, func(o *agent.Options) { o.LogLevel = level })
	framework.Eventually(t, "late replica configured", func() bool {
		return late.ConfigVersion() == v && level.Level() == slog.LevelError
	})
}
