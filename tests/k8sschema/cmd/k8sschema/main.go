// Command k8sschema builds the Kubernetes JSON schemas that kubeconform
// validates deploy/ with, once per machine, and prints their directory.
// scripts/schemas.sh runs it; see package k8sschema.
//
//	k8sschema [DIR]    (default: k8sschema.DefaultDir())
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/kas-project/kas/tests/k8sschema"
)

func main() {
	dir := k8sschema.DefaultDir()
	switch len(os.Args) {
	case 1:
	case 2:
		dir = os.Args[1]
	default:
		fmt.Fprintln(os.Stderr, "usage: k8sschema [DIR]")
		os.Exit(2)
	}
	if err := k8sschema.Ensure(context.Background(), dir); err != nil {
		fmt.Fprintf(os.Stderr, "k8sschema: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(dir)
}
