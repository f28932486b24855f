// Command agentk is the agent that runs in each cluster: it keeps tunnels
// open to the kas dataplane and forwards the Kubernetes API requests that
// arrive on them to the cluster's API server. main maps flags and
// environment variables to agent.Options, handles signals and sets the exit
// code; everything else is package agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/internal/obs"
)

// Version is set at build time: -ldflags "-X main.Version=v1.2.3".
var Version = ""

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // invalid configuration, or the agent failed
	exitUsage = 2 // a command-line mistake
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills at once
	}()
	code := cli{
		stdout:    os.Stdout,
		stderr:    os.Stderr,
		lookupEnv: os.LookupEnv,
		terminal:  obs.IsTerminal(os.Stderr),
		setLogger: slog.SetDefault,
	}.run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

type cli struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
	terminal       bool
	setLogger      func(*slog.Logger)
	started        func(*agent.Agent) // tests: called once the agent runs
}

// config is what the command line and environment set.
type config struct {
	opts      agent.Options
	logLevel  string
	logFormat string
}

// flagDef is one setting: its flag, environment variable and help.
type flagDef struct {
	name, env, arg, help string
	def                  string // shown in the help; "" for none
	bind                 func(fs *flag.FlagSet, name string)
}

func defs(c *config) []flagDef {
	o := &c.opts
	str := func(p *string) func(*flag.FlagSet, string) {
		return func(fs *flag.FlagSet, n string) { fs.StringVar(p, n, *p, "") }
	}
	dur := func(p *time.Duration) func(*flag.FlagSet, string) {
		return func(fs *flag.FlagSet, n string) { fs.DurationVar(p, n, *p, "") }
	}
	return []flagDef{
		{"kas-address", "KAS_ADDRESS", "URL", "the dataplane's agent address, ws://host:port or wss://host[/prefix]", "", str(&o.KASAddress)},
		{"token-file", "KAS_TOKEN_FILE", "FILE", "file holding the agent token", "", str(&o.TokenFile)},
		{"ca-file", "KAS_CA_FILE", "FILE", "PEM certificates trusted for wss:// besides the system's", "", str(&o.CAFile)},
		{"tunnels", "AGENTK_TUNNELS", "N", "tunnels to keep open, on different nodes when possible", "2",
			func(fs *flag.FlagSet, n string) { fs.IntVar(&o.Tunnels, n, o.Tunnels, "") }},
		{"max-connection-age", "AGENTK_MAX_CONNECTION_AGE", "DURATION", "replace each tunnel at this age (±20%)", "30m", dur(&o.MaxConnectionAge)},
		{"min-backoff", "AGENTK_MIN_BACKOFF", "DURATION", "first reconnect delay ceiling (full jitter)", "1s", dur(&o.MinBackoff)},
		{"max-backoff", "AGENTK_MAX_BACKOFF", "DURATION", "largest reconnect delay", "30s", dur(&o.MaxBackoff)},
		{"drain-timeout", "AGENTK_DRAIN_TIMEOUT", "DURATION", "how long a replaced tunnel may finish its streams", "10m", dur(&o.DrainTimeout)},
		{"shutdown-timeout", "AGENTK_SHUTDOWN_TIMEOUT", "DURATION", "how long streams may finish on SIGTERM", "10s", dur(&o.ShutdownTimeout)},
		{"keepalive-interval", "AGENTK_KEEPALIVE_INTERVAL", "DURATION", "tunnel keepalive ping interval", "15s", dur(&o.Tunnel.KeepaliveInterval)},
		{"dead-peer-timeout", "AGENTK_DEAD_PEER_TIMEOUT", "DURATION", "close a tunnel silent for this long", "45s", dur(&o.Tunnel.DeadPeerTimeout)},
		{"kubeconfig", "AGENTK_KUBECONFIG", "FILE", "kubeconfig to reach the Kubernetes API (default: in-cluster service account)", "", str(&o.Kubeconfig)},
		{"kube-api-url", "AGENTK_KUBE_API_URL", "URL", "Kubernetes API server URL, instead of in-cluster or --kubeconfig", "", str(&o.KubeAPIURL)},
		{"kube-token-file", "AGENTK_KUBE_TOKEN_FILE", "FILE", "bearer token for --kube-api-url (re-read as it rotates)", "", str(&o.KubeTokenFile)},
		{"kube-ca-file", "AGENTK_KUBE_CA_FILE", "FILE", "CA certificates for --kube-api-url", "", str(&o.KubeCAFile)},
		{"kube-insecure-skip-tls-verify", "AGENTK_KUBE_INSECURE_SKIP_TLS_VERIFY", "", "do not verify --kube-api-url's certificate", "",
			func(fs *flag.FlagSet, n string) {
				fs.BoolVar(&o.KubeInsecureSkipTLSVerify, n, o.KubeInsecureSkipTLSVerify, "")
			}},
		{"observability-listen", "AGENTK_OBSERVABILITY_LISTEN", "ADDR", "address of /livez, /readyz, /metrics, /debug/pprof/", ":8080", str(&o.ObservabilityListen)},
		{"log-level", "AGENTK_LOG_LEVEL", "LEVEL", "debug, info, warn or error", "info", str(&c.logLevel)},
		{"log-format", "AGENTK_LOG_FORMAT", "FORMAT", "auto (text on a terminal, JSON otherwise), json or text", "auto", str(&c.logFormat)},
	}
}

func usage() string {
	var b strings.Builder
	b.WriteString(`Usage: agentk [flags]
       agentk version

agentk keeps tunnels open to the kas dataplane and forwards the Kubernetes
API requests that arrive on them to this cluster's API server, with its own
service account. HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured.

Flags (each may be set by the environment variable shown; a flag wins):
`)
	for _, d := range defs(&config{}) {
		left := "  --" + d.name
		if d.arg != "" {
			left += " " + d.arg
		}
		help := d.help
		if d.def != "" {
			help += " (default " + d.def + ")"
		}
		fmt.Fprintf(&b, "%s\n        %s\n        env %s\n", left, help, d.env)
	}
	b.WriteString("  --help\n        print this help\n")
	return b.String()
}

// usageError is a command-line mistake: exit 2 with the usage.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parse maps the environment and then the flags to a config.
func (c cli) parse(args []string) (*config, []string, error) {
	cfg := &config{logFormat: obs.FormatAuto}
	cfg.opts.ObservabilityListen = ":8080"
	cfg.opts.Version = version()
	fs := flag.NewFlagSet("agentk", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	ds := defs(cfg)
	for _, d := range ds {
		d.bind(fs, d.name)
	}
	var errs []error
	for _, d := range ds {
		if v, ok := c.lookupEnv(d.env); ok && v != "" {
			if err := fs.Set(d.name, v); err != nil {
				errs = append(errs, fmt.Errorf("environment variable %s: invalid value %q: %v", d.env, v, err))
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, err
		}
		return nil, nil, usageError{err.Error()}
	}
	if len(errs) > 0 {
		return nil, nil, usageError{errors.Join(errs...).Error()}
	}
	return cfg, fs.Args(), nil
}

func (c cli) run(ctx context.Context, args []string) int {
	cfg, rest, err := c.parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(c.stdout, usage())
		return exitOK
	case err != nil:
		fmt.Fprintf(c.stderr, "agentk: %s\n\n%s", err, usage())
		return exitUsage
	}
	if len(rest) > 0 {
		if rest[0] == "version" && len(rest) == 1 {
			fmt.Fprintf(c.stdout, "agentk %s %s %s/%s\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return exitOK
		}
		fmt.Fprintf(c.stderr, "agentk: unexpected argument %q\n\n%s", rest[0], usage())
		return exitUsage
	}
	// The agent's configuration may change the level (observability.logging.level).
	level := new(slog.LevelVar)
	lvl, err := obs.ParseLevel(cfg.logLevel)
	level.Set(lvl)
	var log *slog.Logger
	if err != nil {
		err = fmt.Errorf("log level: %w", err)
	} else {
		log, err = obs.NewLoggerLevel(c.stderr, level, cfg.logFormat, c.terminal)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "agentk: %s (--log-level, --log-format)\n", err)
		return exitUsage
	}
	if c.setLogger != nil {
		c.setLogger(log)
	}
	cfg.opts.Logger, cfg.opts.LogLevel = log, level
	if err := cfg.opts.Validate(); err != nil {
		ps := strings.Split(err.Error(), "\n")
		fmt.Fprintf(c.stderr, "agentk: invalid configuration (%d %s):\n", len(ps), plural(len(ps), "problem"))
		for _, p := range ps {
			fmt.Fprintf(c.stderr, "  %s\n", p)
		}
		return exitError
	}
	a, err := agent.New(cfg.opts)
	if err != nil {
		fmt.Fprintf(c.stderr, "agentk: %s\n", err)
		return exitError
	}
	if c.started != nil {
		c.started(a)
	}
	if err := a.Run(ctx); err != nil {
		log.Error("agent failed", "err", err)
		return exitError
	}
	return exitOK
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}
