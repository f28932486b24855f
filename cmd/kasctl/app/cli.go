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
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// Environment variables that set the global flags' defaults.
const (
	EnvServer       = "KASCTL_SERVER"
	EnvAPIKeyFile   = "KASCTL_API_SECRET_KEY_FILE"
	DefaultServer   = "http://127.0.0.1:8153"
	outputText      = "text"
	outputJSON      = "json"
	defaultTimeout  = 30 * time.Second
	jwtSubject      = "kasctl"
	usageHeaderText = `Usage: kasctl [global flags] <command> [flags]

Global flags (before or after the command):
  --server URL                 control plane API: http://, https:// or unix:///path
                               (default $` + EnvServer + `, else ` + DefaultServer + `)
  --api-secret-key-file FILE   api_secret_key (base64 of 32 bytes) that signs the
                               JWT of each call (default $` + EnvAPIKeyFile + `)
  -o, --output FORMAT          text (default) or json
  --timeout DURATION           bound on each call (default 30s)

Commands:
`
)

// CLI is the kasctl command line.
type CLI struct {
	Stdout, Stderr io.Writer
	// LookupEnv reads the environment; default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Now is the clock (token expiry); default time.Now.
	Now func() time.Time
}

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, cli CLI, g *globals, args []string) error
}

// commands is every subcommand, by name.
var commands = map[string]command{
	"kubeconfig": {"write a kubeconfig for an agent through the Kubernetes API proxy", runKubeconfig},
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
	fs.StringVar(&g.output, "output", g.output, "output format: text or json")
	fs.StringVar(&g.output, "o", g.output, "output format: text or json")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on each call")
}

func (g *globals) check() error {
	if g.output != outputText && g.output != outputJSON {
		return usageError{fmt.Sprintf("--output: %q is not text or json", g.output)}
	}
	if g.timeout <= 0 {
		return usageError{"--timeout: must be positive"}
	}
	return nil
}

// usageError is a command-line mistake: one line, then the usage, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

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
	case errors.As(err, &ue):
		fmt.Fprintf(cli.Stderr, "kasctl: %s\n\n%s", ue.msg, usage())
		return ExitUsage
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
		return usageError{"no command given"}
	}
	name, args := args[0], args[1:]
	if name == "help" {
		return flag.ErrHelp
	}
	cmd, ok := commands[name]
	if !ok {
		return usageError{fmt.Sprintf("unknown command %q", name)}
	}
	return cmd.run(ctx, cli, g, args)
}
