// Command kasctl is the operator CLI of kas: it calls the control plane's
// management API (agents, tokens, routes) and writes kubeconfigs for the
// Kubernetes API proxy. main handles signals and the exit code; everything
// else is in package app.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kas-project/kas/cmd/kasctl/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.CLI{Stdout: os.Stdout, Stderr: os.Stderr}.Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
