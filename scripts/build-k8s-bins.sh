#!/usr/bin/env bash
# Builds the real Kubernetes binaries the end-to-end tests run (tests/k8senv):
# kube-apiserver and kubectl v1.37.2, etcd v3.7.3, kwok and kwokctl v0.8.0
# (with the fixes in scripts/k8s-patches/). Everything comes from the Go
# module proxy, compiled in throwaway modules in a temporary directory:
# k8s.io/kubernetes never enters the project's go.mod.
#
# Usage: scripts/build-k8s-bins.sh [OUTDIR]
#   OUTDIR defaults to $KAS_K8S_BIN, else $XDG_CACHE_HOME/kas/k8s/v1.37.2
#   (~/.cache/...): outside the repository, so every clone on a machine shares
#   one build. tests/k8senv looks in the same place.
#
# Idempotent: when OUTDIR holds every binary and its stamp names these
# versions, nothing is built. Atomic: binaries are built into a sibling
# temporary directory that is renamed to OUTDIR at the end, so an interrupted
# build never leaves a half-filled OUTDIR. A cold build takes 7-9 minutes on
# two cores and ~4 GB of Go build cache; with a warm cache, under a minute.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
KWOK_VERSION=v0.8.0
# Bump KWOK_BUILD when the patches change, here and in tests/k8senv/bins.go.
KWOK_BUILD=$KWOK_VERSION-kas.1
BINS=(kube-apiserver kubectl etcd kwok kwokctl)
STAMP_NAME=.versions
stamp="kubernetes=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_BUILD"

scripts_dir=$(cd "$(dirname "$0")" && pwd)
KWOK_PATCHES=("$scripts_dir"/k8s-patches/kwok-"$KWOK_VERSION"-*.patch)
out=${1:-${KAS_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kas/k8s/$K8S_VERSION}}
log() { echo "build-k8s-bins: $*" >&2; }
# quiet CMD...: runs CMD, showing its output only when it fails.
quiet() {
	local o
	if ! o=$("$@" 2>&1); then
		echo "$o" >&2
		log "failed: $*"
		return 1
	fi
}

up_to_date() {
	[ "$(cat "$out/$STAMP_NAME" 2>/dev/null)" = "$stamp" ] || return 1
	local b
	for b in "${BINS[@]}"; do [ -x "$out/$b" ] || return 1; done
}

if up_to_date; then
	log "up to date in $out ($stamp)"
	exit 0
fi

parent=$(dirname "$out")
mkdir -p "$parent"
parent=$(cd "$parent" && pwd)
out="$parent/$(basename "$out")"

# One build at a time per OUTDIR; a second caller waits, then finds it done.
exec 9>"$out.lock"
if ! flock -n 9; then
	log "another build of $out is running; waiting for it"
	flock 9
fi
if up_to_date; then
	log "up to date in $out ($stamp)"
	exit 0
fi

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/kas-k8s-build.XXXXXX")
staging=$(mktemp -d "$out.new.XXXXXX") # same file system as $out, so mv is a rename
trap 'rm -rf "$work" "$staging"' EXIT

# 1. kube-apiserver and kubectl. k8s.io/kubernetes replaces its staging
#    modules (k8s.io/api, k8s.io/client-go, ...) with ./staging/src/...
#    directories, so `go install` refuses it. A scratch module that requires it
#    and points each of those modules at its published v0.X.Y release builds.
log "resolving k8s.io/kubernetes $K8S_VERSION"
mkdir "$work/k8s"
cd "$work/k8s"
quiet go mod init local/kas-k8s-bins
go mod edit -go=1.26.0 -require="k8s.io/kubernetes@$K8S_VERSION"
upstream_gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
[ -f "$upstream_gomod" ] || { log "no go.mod for k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
staging_version="v0.${K8S_VERSION#v1.}" # v1.37.2 -> v0.37.2
replaces=()
while read -r mod; do
	replaces+=("-replace=$mod=$mod@$staging_version")
done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$upstream_gomod")
[ ${#replaces[@]} -gt 0 ] || { log "found no staging modules in $upstream_gomod"; exit 1; }
go mod edit "${replaces[@]}"
log "replaced ${#replaces[@]} staging modules with $staging_version"
quiet go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
log "building kube-apiserver and kubectl $K8S_VERSION"
go build -trimpath -ldflags "$ldflags" -o "$staging/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl

# 2. etcd: its server module has replace directives too, but the versions it
#    requires resolve on their own in a module without them.
log "building etcd $ETCD_VERSION"
mkdir "$work/etcd"
cd "$work/etcd"
quiet go mod init local/kas-etcd-bin
go mod edit -go=1.26.0
quiet go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
go build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3

# 3. kwok (fake nodes and a fake kubelet: exec, logs, attach, port-forward)
#    and kwokctl, from kwok's module source with our patches (see the
#    k8s-patches/ files: exec stdin EOF and exit codes), built in its own
#    module so its go.mod and go.sum apply.
log "building kwok and kwokctl $KWOK_VERSION with ${#KWOK_PATCHES[@]} patch(es)"
kwok_src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
[ -d "$kwok_src" ] || { log "no source for sigs.k8s.io/kwok@$KWOK_VERSION"; exit 1; }
cp -R "$kwok_src" "$work/kwok"
chmod -R u+w "$work/kwok"
cd "$work/kwok"
for p in "${KWOK_PATCHES[@]}"; do
	quiet patch -p1 --forward --input="$p"
done
go build -trimpath -ldflags "-s -w" -o "$staging/" ./cmd/kwok ./cmd/kwokctl

"$staging/kube-apiserver" --version >&2
"$staging/kubectl" version --client >&2
"$staging/etcd" --version | head -1 >&2
echo "$stamp" >"$staging/$STAMP_NAME"
chmod 755 "$staging"

# Swap in the new directory; an old one (other versions) is removed after.
old=
if [ -e "$out" ]; then
	old=$(mktemp -d "$out.old.XXXXXX")
	mv "$out" "$old/"
fi
mv "$staging" "$out"
[ -z "$old" ] || rm -rf "$old"
log "built ${BINS[*]} into $out in $(($(date +%s) - start))s"
