package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"

	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/obs"
	"github.com/kas-project/kas/internal/pglocal"
	"github.com/kas-project/kas/migrations"
)

// Version is set at build time: -ldflags "-X github.com/kas-project/kas/cmd/kas/app.Version=v1.2.3".
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

const usage = `Usage: kas [flags] <command> [flags]

Commands:
  all                  the control plane and a dataplane node in one process, on the
                       embedded PostgreSQL by default: agents :8150, observability :8151,
                       API :8153, Kubernetes API proxy :8154, private API 127.0.0.1:8155.
                       Prints the commands that connect a first cluster
  controlplane         serve the control-plane API (default :8153) and
                       observability (/metrics, /livez, /readyz; default :8151)
  controlplane gc      delete expired dataplane nodes and their tunnels now
  dataplane            run a dataplane node: agent tunnels (default :8150), node-to-node
                       relay (default :8155), observability (default :8151)
  migrate [--status]   apply pending database migrations (--status: list them)
  version              print the version

Flags (before or after the command):
  --config FILE        YAML configuration file (optional; environment
                       variables KAS_* and OWN_PRIVATE_API_* override it)
  --data-dir DIR       directory of the embedded PostgreSQL used when
                       database.url is empty (database.data_dir, default .kas/postgres)
  --print-config       print the effective configuration (secrets redacted), check it, exit
  --verify-config      check the configuration, report every problem, exit 0 or 1

Without database.url, kas runs PostgreSQL itself in --data-dir and keeps its
generated keys in <data-dir>/../secrets.
`

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// CLI is the kas command line.
type CLI struct {
	Stdout, Stderr io.Writer
	// LookupEnv reads the environment; default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// SetDefaultLogger, when set, receives the configured logger (main
	// passes slog.SetDefault).
	SetDefaultLogger func(*slog.Logger)
	// Program is the path kas was invoked by (os.Args[0]); kas all prints
	// kasctl and agentk commands next to it (bin/kas → bin/kasctl).
	Program string
}

// common are the flags every command accepts.
type common struct {
	configFile   string
	dataDir      string
	printConfig  bool
	verifyConfig bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.configFile, "config", c.configFile, "YAML configuration file")
	fs.StringVar(&c.dataDir, "data-dir", c.dataDir, "embedded PostgreSQL data directory (database.data_dir)")
	fs.BoolVar(&c.printConfig, "print-config", c.printConfig, "print the effective configuration and exit")
	fs.BoolVar(&c.verifyConfig, "verify-config", c.verifyConfig, "check the configuration and exit")
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
		return err
	}
	if err != nil {
		return usageError{fs.Name() + ": " + err.Error()}
	}
	return nil
}

// Run runs the command line args (without the program name) and returns the
// exit code.
func (cli CLI) Run(ctx context.Context, args []string) int {
	if cli.LookupEnv == nil {
		cli.LookupEnv = os.LookupEnv
	}
	err := cli.run(ctx, args)
	var ue usageError
	var ce *ConfigError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(cli.Stdout, usage)
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(cli.Stderr, "kas: %s\n\n%s", ue.msg, usage)
		return ExitUsage
	case errors.As(err, &ce):
		ps := ce.Problems()
		fmt.Fprintf(cli.Stderr, "kas: invalid configuration (%d %s):\n", len(ps), plural(len(ps), "problem"))
		for _, p := range ps {
			fmt.Fprintf(cli.Stderr, "  %s\n", p)
		}
		return ExitError
	case errors.Is(err, pglocal.ErrNotInstalled):
		fmt.Fprintf(cli.Stderr, "kas: %s\n", pglocal.ErrNotInstalled)
		return ExitError
	}
	fmt.Fprintf(cli.Stderr, "kas: %s\n", err)
	return ExitError
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

func (cli CLI) run(ctx context.Context, args []string) error {
	var c common
	top := newFlagSet("kas")
	c.register(top)
	if err := parse(top, args); err != nil {
		return err
	}
	args = top.Args()
	if len(args) == 0 {
		if c.printConfig || c.verifyConfig {
			return cli.checkOnly(c, config.RoleAll)
		}
		return usageError{"no command given"}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "controlplane":
		fs := newFlagSet("controlplane")
		c.register(fs)
		if err := parse(fs, args); err != nil {
			return err
		}
		switch rest := fs.Args(); {
		case len(rest) == 0:
			return cli.serve(ctx, c, config.RoleControlplane)
		case rest[0] == "gc":
			gfs := newFlagSet("controlplane gc")
			c.register(gfs)
			if err := parse(gfs, rest[1:]); err != nil {
				return err
			}
			if len(gfs.Args()) > 0 {
				return usageError{fmt.Sprintf("controlplane gc: unexpected argument %q", gfs.Arg(0))}
			}
			return cli.gc(ctx, c)
		default:
			return usageError{fmt.Sprintf("controlplane: unknown subcommand %q", rest[0])}
		}
	case "all":
		fs := newFlagSet("all")
		c.register(fs)
		if err := parse(fs, args); err != nil {
			return err
		}
		if len(fs.Args()) > 0 {
			return usageError{fmt.Sprintf("all: unexpected argument %q", fs.Arg(0))}
		}
		return cli.serve(ctx, c, config.RoleAll)
	case "dataplane":
		fs := newFlagSet("dataplane")
		c.register(fs)
		if err := parse(fs, args); err != nil {
			return err
		}
		if len(fs.Args()) > 0 {
			return usageError{fmt.Sprintf("dataplane: unexpected argument %q", fs.Arg(0))}
		}
		return cli.serve(ctx, c, config.RoleDataplane)
	case "migrate":
		fs := newFlagSet("migrate")
		c.register(fs)
		status := fs.Bool("status", false, "list pending migrations without applying them")
		if err := parse(fs, args); err != nil {
			return err
		}
		if len(fs.Args()) > 0 {
			return usageError{fmt.Sprintf("migrate: unexpected argument %q", fs.Arg(0))}
		}
		return cli.migrate(ctx, c, *status)
	case "version":
		if len(args) > 0 {
			return usageError{fmt.Sprintf("version: unexpected argument %q", args[0])}
		}
		fmt.Fprintf(cli.Stdout, "kas %s %s %s/%s\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "help":
		return flag.ErrHelp
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// load reads the configuration: file, environment, then flags. When some
// settings do not parse, the problems of the others (as validated for role)
// are reported with them.
func (cli CLI) load(c common, role config.Role) (*config.Config, error) {
	cfg, err := config.Load(c.configFile, cli.LookupEnv)
	if cfg == nil {
		return nil, err
	}
	if c.dataDir != "" {
		cfg.Database.DataDir = c.dataDir
	}
	if err != nil {
		return nil, &ConfigError{errors.Join(err, cfg.Validate(role))}
	}
	return cfg, nil
}

// checkOnly handles --print-config and --verify-config for role.
func (cli CLI) checkOnly(c common, role config.Role) error {
	cfg, err := cli.load(c, role)
	if err != nil {
		return err
	}
	if c.printConfig {
		out, err := cfg.YAML()
		if err != nil {
			return err
		}
		cli.Stdout.Write(out)
	}
	if err := cfg.Validate(role); err != nil {
		return &ConfigError{err}
	}
	if c.verifyConfig {
		fmt.Fprintf(cli.Stderr, "kas: configuration is valid for role %s\n", role)
	}
	return nil
}

func (cli CLI) logger(cfg *config.Config, role config.Role) (*slog.Logger, error) {
	terminal := false
	if f, ok := cli.Stderr.(*os.File); ok {
		terminal = obs.IsTerminal(f)
	}
	log, err := obs.NewLogger(cli.Stderr, cfg.Observability.LogLevel, cfg.Observability.LogFormat, terminal)
	if err != nil {
		// Report it with every other problem, each naming its setting.
		if verr := cfg.Validate(role); verr != nil {
			return nil, &ConfigError{verr}
		}
		return nil, err
	}
	if cli.SetDefaultLogger != nil {
		cli.SetDefaultLogger(log)
	}
	return log, nil
}

func (cli CLI) serve(ctx context.Context, c common, role config.Role) error {
	if c.printConfig || c.verifyConfig {
		return cli.checkOnly(c, role)
	}
	cfg, err := cli.load(c, role)
	if err != nil {
		return err
	}
	log, err := cli.logger(cfg, role)
	if err != nil {
		return err
	}
	log = log.With("role", role.String())
	o := Options{Role: role, Config: cfg, Logger: log}
	var s *Server
	if role == config.RoleAll {
		o.Started = func() { fmt.Fprint(cli.Stdout, cli.welcome(s).Text()) }
	}
	s, err = New(ctx, o)
	if err != nil {
		return err
	}
	defer s.Close()
	log.Info("kas started", "version", version())
	return s.Run(ctx)
}

// welcome describes the running all-in-one server s.
func (cli CLI) welcome(s *Server) welcome {
	w := welcome{Endpoints: s.Endpoints(), Username: exampleUsername()}
	w.Kasctl, w.Agentk = siblingBinaries(cli.Program)
	if s.node != nil {
		w.NodeID = s.node.ID()
	}
	db := s.cfg.Database
	if db.Embedded() {
		w.DataDir = db.DataDir
	}
	w.StateDir = filepath.Dir(filepath.Clean(db.DataDir))
	return w
}

func (cli CLI) migrate(ctx context.Context, c common, status bool) error {
	if c.printConfig || c.verifyConfig {
		return cli.checkOnly(c, config.RoleMigrate)
	}
	cfg, err := cli.load(c, config.RoleMigrate)
	if err != nil {
		return err
	}
	if err := cfg.Validate(config.RoleMigrate); err != nil {
		return &ConfigError{err}
	}
	log, err := cli.logger(cfg, config.RoleMigrate)
	if err != nil {
		return err
	}
	db, err := openDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.close()
	all, err := migrations.All()
	if err != nil {
		return err
	}
	if status {
		pending, err := migrations.Pending(ctx, db.pool)
		if err != nil {
			return err
		}
		fmt.Fprintf(cli.Stdout, "%d migrations, %d applied, %d pending\n", len(all), len(all)-len(pending), len(pending))
		for _, m := range pending {
			fmt.Fprintf(cli.Stdout, "pending: %s\n", m.Name)
		}
		return nil
	}
	n, err := migrations.Up(ctx, db.pool)
	if err != nil {
		return err
	}
	last := all[len(all)-1]
	if n == 0 {
		fmt.Fprintf(cli.Stdout, "database is up to date at version %d (%s)\n", last.Version, last.Name)
	} else {
		fmt.Fprintf(cli.Stdout, "applied %d %s; database is at version %d (%s)\n", n, plural(n, "migration"), last.Version, last.Name)
	}
	return nil
}
