#!/usr/bin/env bash
# Builds the Helm command the chart tests use (`helm lint`, `helm template`, `helm
# install`) from the Go module pinned in hack/helm, once per machine, into the same
# per-user cache directory as the control plane. Prints the path of the binary.
#
# Honours HELM: when it names an executable, nothing is built and that is printed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -n "${HELM:-}" ]] && command -v "${HELM}" >/dev/null 2>&1; then
  command -v "${HELM}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed; Helm is built from source for the chart tests." >&2
  echo "       Install Go 1.26 or newer (Debian: apt-get install golang-go, or https://go.dev/doc/install)" >&2
  echo "       or set HELM to a helm v3 binary." >&2
  exit 1
fi

version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$here/helm/go.mod")
client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$here/helm/go.mod")
cache=${ROUTER_CONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/router-controller}
stamp=$(cat "$here"/helm/go.mod "$here"/helm/go.sum "$0" | sha256sum | cut -c1-12)
bin="$cache/helm-${version}-${stamp}"

if [[ -x "$bin/helm" ]]; then
  echo "$bin/helm"
  exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

# The Kubernetes version `helm template` and `helm lint` assume without a cluster, set
# from client-go's as Helm's own Makefile does (client-go v0.X.Y is Kubernetes 1.X).
minor=${client_go#v0.}
minor=${minor%%.*}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${version} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${minor}"
done

echo "building helm ${version} into ${bin}; a cold build takes a few minutes" >&2
(
  cd "$here/helm"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
)
mv "$tmp" "$bin"
trap - EXIT
echo "built in $(( $(date +%s) - start )) s" >&2
echo "$bin/helm"
