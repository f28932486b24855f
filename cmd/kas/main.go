// Command kas is the agent server for Kubernetes: `kas controlplane` serves
// the control-plane API over Postgres, `kas dataplane` runs a dataplane
// node, and `kas all` runs both in one process. main handles signals and
// the exit code; everything else is in package app.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kas-project/kas/cmd/kas/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills at once
	}()
	code := app.CLI{Stdout: os.Stdout, Stderr: os.Stderr, SetDefaultLogger: slog.SetDefault, Program: os.Args[0]}.Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
