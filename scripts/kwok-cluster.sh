#!/usr/bin/env bash
# A throwaway Kubernetes cluster for trying kas by hand: the real
# kube-apiserver and etcd plus kwok (a fake node and kubelet), started by
# kwokctl from the binaries of scripts/build-k8s-bins.sh. Tests do not use
# this script: tests/k8senv starts its own cluster on free ports.
#
# Usage: scripts/kwok-cluster.sh up|down|env
#   up    builds the binaries if needed, creates cluster "kas" and a Running
#         pod kas-demo/demo, and prints the KUBECONFIG to use
#   down  deletes the cluster
#   env   prints `export KUBECONFIG=...`
#
# In the demo pod, `kubectl exec` runs commands on this machine in
# $DIR/pod, `kubectl logs`/`attach` read $DIR/pod.log (append lines as
# "<RFC3339Nano time> stdout F <text>"), and `kubectl port-forward pod/demo
# 8080:80` reaches 127.0.0.1:$KAS_KWOK_FORWARD_PORT (default 18080; run a
# server there yourself). kwokctl picks the API server's port; it binds
# 0.0.0.0, so two clusters at once may collide.
#
# Environment: KAS_K8S_BIN (binaries), KAS_KWOK_DIR (state; default
# ~/.cache/kas/kwok), KAS_KWOK_FORWARD_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-}
name=kas
bin=${KAS_K8S_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kas/k8s/v1.37.2}
dir=${KAS_KWOK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kas/kwok}
forward_port=${KAS_KWOK_FORWARD_PORT:-18080}
export KWOK_WORKDIR="$dir/kwokctl" # kwokctl's state; its default is ~/.kwok
kubeconfig="$dir/kubeconfig"

case "$action" in
up) ;;
down)
	if [ -x "$bin/kwokctl" ]; then "$bin/kwokctl" delete cluster --name "$name" || true; fi
	rm -f "$kubeconfig"
	exit 0
	;;
env)
	echo "export KUBECONFIG=$kubeconfig"
	exit 0
	;;
*)
	echo "usage: $0 up|down|env" >&2
	exit 2
	;;
esac

scripts/build-k8s-bins.sh "$bin"
mkdir -p "$dir/pod"
touch "$dir/pod.log"
cat >"$dir/kubelet.yaml" <<YAML
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata: {name: kas-exec-on-host}
spec:
  execs:
  - local: {workDir: "$dir/pod"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {name: kas-logs}
spec:
  logs:
  - {logsFile: "$dir/pod.log", follow: true}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata: {name: kas-attach}
spec:
  attaches:
  - {logsFile: "$dir/pod.log"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata: {name: kas-port-forward}
spec:
  forwards:
  - target: {address: 127.0.0.1, port: $forward_port}
YAML

# No controller manager or scheduler (not built): pods name their node, and
# the default service accounts are created below.
"$bin/kwokctl" create cluster --name "$name" --runtime binary \
	--kube-apiserver-binary "$bin/kube-apiserver" --etcd-binary "$bin/etcd" \
	--kwok-controller-binary "$bin/kwok" \
	--disable kube-controller-manager --disable kube-scheduler \
	--config "$dir/kubelet.yaml" --kubeconfig "$kubeconfig" --wait 120s

k() { KUBECONFIG="$kubeconfig" "$bin/kubectl" "$@"; }
k apply -f - <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: kas-demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: kas-demo}
---
apiVersion: v1
kind: Node
metadata:
  name: kas-node-0
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kas-node-0, type: kwok}
---
apiVersion: v1
kind: Pod
metadata: {name: demo, namespace: kas-demo, labels: {app: demo}}
spec:
  nodeName: kas-node-0
  automountServiceAccountToken: false
  containers:
  - {name: demo, image: registry.invalid/kas/demo:latest, ports: [{containerPort: 80}]}
YAML
k -n kas-demo wait --for=jsonpath='{.status.phase}'=Running pod/demo --timeout=60s
echo "cluster $name is up; use it with:"
echo "  export KUBECONFIG=$kubeconfig"
