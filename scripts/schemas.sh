#!/usr/bin/env bash
# Builds the JSON schemas of the Kubernetes API (the version tests/k8senv
# runs) that kubeconform validates deploy/ with, offline: from swagger.json
# in the k8s.io/kubernetes module (downloaded with `go mod download` outside
# this module; go.mod is not touched). Idempotent: a complete set is kept.
# Output: ~/.cache/kas/schemas/<version> ($KAS_SCHEMA_DIR, or the directory
# given as the argument); the directory is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./tests/k8sschema/cmd/k8sschema "$@"
