#!/usr/bin/env bash
# Prints config/default rendered with kubectl's built-in kustomize and the operator
# image set to IMG (the first argument), without touching any tracked file: the image
# is set in a throw-away overlay under dist/.
#
#   hack/render-default.sh example.com/router-controller:v0.1.0 > dist/install.yaml
#
# IMG may carry a tag (name:tag), a digest (name@sha256:...) or neither (name, which
# keeps the manifests' tag). KUBECTL overrides the kubectl command.
set -euo pipefail

img=${1:?usage: hack/render-default.sh IMG}
kubectl=${KUBECTL:-kubectl}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

name=$img
tag=""
digest=""
if [[ $name == *@* ]]; then
  digest=${name#*@}
  name=${name%%@*}
fi
last=${name##*/}
if [[ $last == *:* ]]; then # a colon after the last slash is a tag, not a registry port
  tag=${last##*:}
  name=${name%:*}
fi

mkdir -p "$root/dist"
overlay=$(mktemp -d "$root/dist/.render.XXXXXX")
trap 'rm -rf "$overlay"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "- ../../config/default"
  echo "images:"
  echo "- name: controller"
  echo "  newName: $name"
  if [[ -n $tag ]]; then echo "  newTag: \"$tag\""; fi
  if [[ -n $digest ]]; then echo "  digest: $digest"; fi
} >"$overlay/kustomization.yaml"
"$kubectl" kustomize "$overlay"
