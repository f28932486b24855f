package app

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// subcommand is one command of a group (kasctl agents create).
type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, cli CLI, g *globals, args []string) error
}

// runGroup runs the subcommand of group named by args[0]. Global flags may
// come before it (kasctl agents -o json list).
func runGroup(ctx context.Context, cli CLI, g *globals, group string, subs []subcommand, args []string) error {
	fs := newFlagSet(group)
	g.register(fs)
	if err := parse(fs, args); err != nil {
		var he helpError
		if errors.As(err, &he) {
			fmt.Fprint(cli.Stdout, groupUsage(group, subs))
			return nil
		}
		return err
	}
	args = fs.Args()
	if len(args) == 0 {
		return usageError{fmt.Sprintf("%s: give a command: %s (kasctl %s --help)", group, names(subs), group)}
	}
	if args[0] == "help" {
		fmt.Fprint(cli.Stdout, groupUsage(group, subs))
		return nil
	}
	for _, sc := range subs {
		if sc.name == args[0] {
			return sc.run(ctx, cli, g, args[1:])
		}
	}
	return usageError{fmt.Sprintf("%s: unknown command %q; use one of %s", group, args[0], names(subs))}
}

func names(subs []subcommand) string {
	n := make([]string, len(subs))
	for i, sc := range subs {
		n[i] = sc.name
	}
	return strings.Join(n, ", ")
}

func groupUsage(group string, subs []subcommand) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: kasctl %s <command> [flags]\n\nCommands:\n", group)
	for _, sc := range subs {
		fmt.Fprintf(&b, "  %-18s %s\n", sc.name, sc.summary)
	}
	fmt.Fprintf(&b, "\nRun `kasctl %s <command> --help` for a command's flags; `kasctl --help` for the global flags.\n", group)
	return b.String()
}
