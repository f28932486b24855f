// Package app is kasctl: subcommands over the control plane's management
// API sharing one client setup (--server, --api-secret-key-file, -o).
// main and the tests run the same CLI.
//
// A command is an entry of the commands table: a name, a one-line summary,
// and a function that gets the parsed global flags and its own arguments.
// New commands add an entry and a file.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitError    = 1 // the call failed: server unreachable, refused, or an error
	ExitUsage    = 2 // a command-line mistake
	ExitNotFound = 3 // the agent, token or other object does not exist
)

// Environment variables that set the global flags' defaults.
const (
	EnvServer       = "KASCTL_SERVER"
	EnvAPIKeyFile   = "KASCTL_API_SECRET_KEY_FILE"
	DefaultServer   = "http://127.0.0.1:8153"
	outputText      = "text" // the same as table
	outputTable     = "table"
	outputJSON      = "json"
	outputID        = "id"
	defaultTimeout  = 30 * time.Second
	jwtSubject      = "kasctl"
	usageHeaderText = `Usage: kasctl [global flags] <command> [flags]

Global flags (before or after the command):
  --server URL                 control plane API: http://, https:// or unix:///path
                               (default $` + EnvServer + `, else ` + DefaultServer + `)
  --api-secret-key-file FILE   api_secret_key (base64 of 32 bytes) that signs the
                               JWT of each call (default $` + EnvAPIKeyFile + `, else
                               the key kas all generated, .kas/secrets/api_secret_key)
  -o, --output FORMAT          table (default), json (protojson of the response),
                               or id (only the IDs, one per line, for scripts)
  --timeout DURATION           bound on each call (default 30s)

Exit codes: 0 success, 1 the call failed (control plane unreachable, refused,
or an error), 2 command-line mistake, 3 not found.

Commands:
`
)

// CLI is the kasctl command line.
type CLI struct {
	Stdout, Stderr io.Writer
	// Stdin is read by `config put -`; default os.Stdin.
	Stdin io.Reader
	// LookupEnv reads the environment; default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Now is the clock (token expiry); default time.Now.
	Now func() time.Time
}

func (cli CLI) stdin() io.Reader {
	if cli.Stdin == nil {
		return os.Stdin
	}
	return cli.Stdin
}

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, cli CLI, g *globals, args []string) error
}

// commands is every subcommand, by name.
var commands = map[string]command{
	"kubeconfig":  {"write a kubeconfig for an agent through the Kubernetes API proxy", runKubeconfig},
	"agents":      {"create, list, get or delete agents", runAgents},
	"tokens":      {"create, list or revoke an agent's tokens (what agentk presents)", runTokens},
	"config":      {"put or get an agent's configuration (YAML)", runConfig},
	"credentials": {"access tokens (pat:), CI job tokens (ci:) and sessions for the proxy", runCredentials},
	"connected":   {"which dataplane nodes hold tunnels of the given agents", runConnected},
	"routes":      {"tunnel routes: agent, node, tunnels, state", runRoutes},
	"nodes":       {"dataplane nodes: private URL, state, heartbeat, tunnels", runNodes},
}

func usage() string {
	var b strings.Builder
	b.WriteString(usageHeaderText)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  %-12s %s\n", n, commands[n].summary)
	}
	b.WriteString("\nRun `kasctl <command> --help` for a command's flags.\n")
	return b.String()
}

// globals are the flags every command accepts.
type globals struct {
	server     string
	apiKeyFile string
	output     string
	timeout    time.Duration
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "control plane URL")
	fs.StringVar(&g.apiKeyFile, "api-secret-key-file", g.apiKeyFile, "file holding api_secret_key")
	fs.StringVar(&g.output, "output", g.output, "output format: table, json or id")
	fs.StringVar(&g.output, "o", g.output, "output format: table, json or id")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on each call")
}

func (g *globals) check() error {
	if g.output == outputText {
		g.output = outputTable
	}
	if g.output != outputTable && g.output != outputJSON && g.output != outputID {
		return usageError{fmt.Sprintf("--output: %q is not table, json or id", g.output)}
	}
	if g.timeout <= 0 {
		return usageError{"--timeout: must be positive"}
	}
	return nil
}

// usageError is a command-line mistake: one line, exit 2 (and the usage
// when no command was given).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const noCommand = "no command given"

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses args into fs, turning flag errors into usage errors.
func parse(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return helpError{fs}
	}
	if err != nil {
		return usageError{fs.Name() + ": " + err.Error()}
	}
	return nil
}

// helpError asks for a command's flags to be printed.
type helpError struct{ fs *flag.FlagSet }

func (helpError) Error() string { return "help requested" }

// Run runs the command line args (without the program name) and returns
// the exit code.
func (cli CLI) Run(ctx context.Context, args []string) int {
	if cli.LookupEnv == nil {
		cli.LookupEnv = os.LookupEnv
	}
	if cli.Now == nil {
		cli.Now = time.Now
	}
	err := cli.run(ctx, args)
	var ue usageError
	var he helpError
	var ce codedError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(cli.Stdout, usage())
		return ExitOK
	case errors.As(err, &he):
		fmt.Fprintf(cli.Stdout, "Usage of kasctl %s:\n", he.fs.Name())
		he.fs.SetOutput(cli.Stdout)
		he.fs.PrintDefaults()
		return ExitOK
	case errors.As(err, &ue) && ue.msg == noCommand:
		fmt.Fprintf(cli.Stderr, "kasctl: %s\n\n%s", ue.msg, usage())
		return ExitUsage
	case errors.As(err, &ue):
		fmt.Fprintf(cli.Stderr, "kasctl: %s\n", ue.msg)
		return ExitUsage
	case errors.As(err, &ce):
		fmt.Fprintf(cli.Stderr, "kasctl: %s\n", err)
		return ce.ExitCode()
	}
	fmt.Fprintf(cli.Stderr, "kasctl: %s\n", err)
	return ExitError
}

func (cli CLI) run(ctx context.Context, args []string) error {
	g := &globals{server: DefaultServer, output: outputText, timeout: defaultTimeout}
	if v, ok := cli.LookupEnv(EnvServer); ok && v != "" {
		g.server = v
	}
	if v, ok := cli.LookupEnv(EnvAPIKeyFile); ok {
		g.apiKeyFile = v
	} else {
		g.apiKeyFile = defaultKeyFile()
	}
	top := newFlagSet("kasctl")
	g.register(top)
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	args = top.Args()
	if len(args) == 0 {
		return usageError{noCommand}
	}
	name, args := args[0], args[1:]
	if name == "help" {
		return flag.ErrHelp
	}
	cmd, ok := commands[name]
	if !ok {
		return usageError{fmt.Sprintf("unknown command %q (kasctl --help lists them)", name)}
	}
	return cmd.run(ctx, cli, g, args)
}
