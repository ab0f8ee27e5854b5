# router-controller — make targets with kubebuilder's names.
# Run `make help` for the list.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IMG ?= controller:latest
KUBECTL ?= kubectl

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with the operator and its development tools (pinned by constraints.txt).

.PHONY: controlplane
controlplane: ## Build (once per machine, cached) etcd, kube-apiserver and kube-controller-manager for tests.
	bash hack/build-control-plane.sh

.PHONY: cluster
cluster: venv controlplane ## Start a local control plane and print its kubeconfig; Ctrl-C stops it.
	$(PY) -m router_controller.envtest

.PHONY: lint
lint: venv ## ruff check, ruff format --check, mypy (strict).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test
test: venv controlplane ## Run every test (unit and on a real control plane).
	$(VENV)/bin/pytest
