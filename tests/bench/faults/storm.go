package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// stormFigures is the last stdout line of tests/bench/dataplane -storm-json.
type stormFigures struct {
	Agents            int     `json:"agents"`
	ConnectS          float64 `json:"connect_s"`
	RerouteS          float64 `json:"reroute_s"`
	RerouteP50S       float64 `json:"reroute_p50_s"`
	RerouteP99S       float64 `json:"reroute_p99_s"`
	CPErrors          int     `json:"cp_errors"`
	AttemptsPerSecond []int   `json:"attempts_per_second"`
	SpreadOK          bool    `json:"spread_ok"`
}

// runStorm builds tests/bench/dataplane and runs its -storm-json mode: a
// fleet of agents connects to one node, the node is killed with SIGKILL,
// and the agents reconnect at once to another. It needs the module's
// source (go run from the repository).
func runStorm(ctx context.Context, e *env) result {
	res := result{fault: "10,000 agents (1,000 with -short) reconnect at once after SIGKILL of their node", goal: "routed ≤ 60 s, 0 cp errors", recovery: "-", lost: "-", baseline: "-", baselineOK: true}
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		res.skipped = "no Go module here (run from the repository)"
		return res
	}
	src, err := os.ReadFile(filepath.Join(root, "tests/bench/dataplane/main.go"))
	if err != nil || !bytes.Contains(src, []byte("storm-json")) {
		res.skipped = "tests/bench/dataplane has no -storm-json mode yet"
		return res
	}
	bin := filepath.Join(e.dir, "dataplane-bench")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./tests/bench/dataplane")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		res.notes = append(res.notes, fmt.Sprintf("build tests/bench/dataplane: %v: %s", err, out))
		return res
	}
	args := []string{"-storm-json"}
	if e.cfg.short {
		args = append(args, "-short")
	}
	logPath := filepath.Join(e.dir, "storm.log")
	logf, err := os.Create(logPath)
	if err != nil {
		res.notes = append(res.notes, err.Error())
		return res
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = root
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KAS_BENCH_SHORT=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	t0 := time.Now()
	out, err := cmd.Output()
	logf.Write(out)
	if err != nil {
		res.notes = append(res.notes, fmt.Sprintf("tests/bench/dataplane %s: %v (log: %s)", strings.Join(args, " "), err, logPath))
		return res
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var f stormFigures
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &f); err != nil {
		res.notes = append(res.notes, fmt.Sprintf("storm: last line is not the JSON figures: %v (log: %s)", err, logPath))
		return res
	}
	res.fault = fmt.Sprintf("%d agents reconnect at once after SIGKILL of their node (tests/bench/dataplane -storm-json, %.0f s)", f.Agents, time.Since(t0).Seconds())
	res.sent, res.ok = f.Agents, f.Agents
	res.causes = fmt.Sprintf("control-plane errors %d", f.CPErrors)
	res.recovery = fmt.Sprintf("%.1f s", f.RerouteS)
	res.met = f.RerouteS > 0 && f.RerouteS <= 60 && f.CPErrors == 0 && f.SpreadOK
	res.notes = append(res.notes,
		fmt.Sprintf("connect %.1f s; all re-routed %.1f s (per agent p50 %.1f s, p99 %.1f s); control-plane errors %d; backoff spread ok: %v",
			f.ConnectS, f.RerouteS, f.RerouteP50S, f.RerouteP99S, f.CPErrors, f.SpreadOK),
		fmt.Sprintf("reconnect attempts per second after the kill: %v", f.AttemptsPerSecond))
	return res
}
