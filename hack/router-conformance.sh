#!/usr/bin/env bash
# make router-conformance ROUTER_SRC=<production-stack checkout, or its src/>:
# runs tests/conformance/run.py against the vllm_router in that source. The router's
# own virtualenv (Python >= 3.12, its requirements.txt) is built once into the same
# per-user cache as the control plane, keyed by the requirements file and the Python.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=${1:-}
if [[ -z "$src" ]]; then
  echo "usage: make router-conformance ROUTER_SRC=<production-stack checkout or its src/ folder>" >&2
  exit 2
fi
[[ -d "$src/src/vllm_router" ]] && src="$src/src"
if [[ ! -f "$src/vllm_router/app.py" || ! -f "$src/vllm_router/requirements.txt" ]]; then
  echo "error: $src holds no vllm_router (app.py, requirements.txt); point ROUTER_SRC at a production-stack checkout or its src/ folder" >&2
  exit 2
fi
src=$(cd "$src" && pwd)

# A Python the router runs on (it needs 3.12 or newer): ROUTER_PYTHON, else the first
# python3.13/python3.12 that works, on PATH or in pyenv's versions.
py=${ROUTER_PYTHON:-}
if [[ -z "$py" ]]; then
  for candidate in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[23]*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      py=$candidate
      break
    fi
  done
fi
if [[ -z "$py" ]]; then
  echo "error: the router needs Python 3.12 or newer; install it or set ROUTER_PYTHON=/path/to/python3.12" >&2
  exit 2
fi

cache=${ROUTER_CONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/router-controller}
stamp=$( { cat "$src/vllm_router/requirements.txt"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)
venv="$cache/router-venv-$stamp"
if [[ ! -f "$venv/.installed" ]]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/router-venv-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "building the router's virtualenv ($("$py" --version), $src/vllm_router/requirements.txt) into $venv" >&2
  "$py" -m venv "$tmp"
  "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check -r "$src/vllm_router/requirements.txt"
  touch "$tmp/.installed"
  rm -rf "$venv"
  mv "$tmp" "$venv"  # only python -m is used from it, so the move is safe
  trap - EXIT
fi

cd "$here/.."
exec "${VENV:-.venv}/bin/python" -m tests.conformance.run --router-python "$venv/bin/python" --router-src "$src"
