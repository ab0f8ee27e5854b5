#!/usr/bin/env bash
# Builds the control plane used by the tests (etcd, kube-apiserver,
# kube-controller-manager) from the Go modules pinned under hack/, once per
# machine, into a per-user cache directory. Prints the folder holding the binaries.
#
# Honours KUBEBUILDER_ASSETS: when it names a folder with kube-apiserver and etcd,
# nothing is built and that folder is printed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/kube-apiserver" && -x "${KUBEBUILDER_ASSETS}/etcd" ]]; then
  echo "${KUBEBUILDER_ASSETS}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed; the test control plane is built from source." >&2
  echo "       Install Go 1.26 or newer (Debian: apt-get install golang-go, or https://go.dev/doc/install)" >&2
  echo "       or point KUBEBUILDER_ASSETS at a folder holding kube-apiserver, kube-controller-manager and etcd." >&2
  exit 1
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/kubernetes/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$here/etcd/go.mod")
cache=${ROUTER_CONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/router-controller}
stamp=$(cat "$here"/kubernetes/go.mod "$here"/kubernetes/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum "$0" | sha256sum | cut -c1-12)
bin="$cache/controlplane-${k8s_version}-etcd-${etcd_version}-${stamp}"

if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/etcd" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

minor=${k8s_version#v1.}
minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"

echo "building control plane (kubernetes ${k8s_version}, etcd ${etcd_version}) into ${bin}; a cold build takes 5-20 minutes on 2 cores" >&2
(
  cd "$here/etcd"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
)
(
  cd "$here/kubernetes"
  for cmd in kube-apiserver kube-controller-manager; do
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
)
mv "$tmp" "$bin"
trap - EXIT
echo "built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
