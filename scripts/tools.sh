#!/usr/bin/env bash
# Installs the project's pinned tools into .bin/ (git-ignored). Idempotent:
# a tool already present at the pinned version is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .bin
export GOBIN="$PWD/.bin"
install() { # name module@version
	local stamp=".bin/.$1.version"
	if [ -x ".bin/$1" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$2" ]; then return; fi
	echo "installing $2" >&2
	go install "$2"
	echo "$2" >"$stamp"
}
install buf github.com/bufbuild/buf/cmd/buf@v1.75.0
install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
install protoc-gen-connect-go connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1
install grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
# Helm and kubeconform render and validate deploy/ (tests/deploy_test.go).
install helm helm.sh/helm/v3/cmd/helm@v3.22.0
install kubeconform github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0
# Debian packages: PostgreSQL binaries (the embedded database and the tests),
# Ruby with the grpc gem (the Rails-like client tests), and protoc with
# grpc_ruby_plugin (`make generate` writes the Ruby stubs with them).
need_pkgs=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v ruby >/dev/null 2>&1 && ruby -e 'require "grpc"' 2>/dev/null || need_pkgs+=(ruby ruby-grpc ruby-google-protobuf)
command -v protoc >/dev/null 2>&1 && command -v grpc_ruby_plugin >/dev/null 2>&1 || need_pkgs+=(protobuf-compiler protobuf-compiler-grpc)
command -v patch >/dev/null 2>&1 || need_pkgs+=(patch) # scripts/build-k8s-bins.sh patches kwok
if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "installing Debian packages: ${need_pkgs[*]}" >&2
	SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Real Kubernetes binaries (kube-apiserver, kubectl, etcd, kwok) for the
# tests that run a cluster (tests/k8senv): built once per machine, ~7 min
# cold, into ~/.cache/kas/k8s outside the repository (or $KAS_K8S_BIN).
# Only `make test` needs them, so `make run` does not wait: pass --k8s.
if [ "${1:-}" = --k8s ]; then
	scripts/build-k8s-bins.sh
	scripts/schemas.sh # JSON schemas for kubeconform, from the same Kubernetes version
fi
