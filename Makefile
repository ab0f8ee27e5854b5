# router-controller — make targets with kubebuilder's names and meaning.
# Run `make help` for the list.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The operator image for docker-build, docker-push, deploy and build-installer.
IMG ?= controller:latest
KUBECTL ?= kubectl
CONTAINER_TOOL ?= docker
# Extra arguments for `make run` (passed to the operator) and `make bench`.
ARGS ?=
# `make uninstall ignore-not-found=true` ignores objects that are already gone.
ignore-not-found ?= false

# $(call need,COMMAND,how to get it): stop with a clear message when COMMAND is missing.
need = @command -v $(1) >/dev/null 2>&1 || { echo "error: $(1) not found; $(2)" >&2; exit 1; }
NEED_KUBECTL = $(call need,$(KUBECTL),install kubectl (it includes kustomize): https://kubernetes.io/docs/tasks/tools/ or set KUBECTL=/path/to/kubectl)
NEED_PYTHON = $(call need,$(PYTHON),install Python 3.11 or newer (Debian: apt-get install python3 python3-venv) or set PYTHON=/path/to/python3)

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

$(VENV)/.installed: pyproject.toml constraints.txt
	$(NEED_PYTHON)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: $(PYTHON) is older than 3.11; install Python 3.11 or newer or set PYTHON=" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with the operator and its development tools (pinned by constraints.txt).

.PHONY: manifests
manifests: venv ## Check the hand-written CRD against the pydantic API models (they must not drift) and that the package ships it.
	$(VENV)/bin/pytest -q tests/unit/test_crd_schema.py tests/unit/test_check.py::test_the_packaged_crd_is_config_crd

.PHONY: controlplane
controlplane: ## Build (once per machine, cached) etcd, kube-apiserver and kube-controller-manager for tests.
	bash hack/build-control-plane.sh

.PHONY: controlplane-report
controlplane-report: venv controlplane ## Print the control plane's versions and cached start time; COLD=1 also times a build from an empty Go build cache.
	@if [[ "$${COLD:-}" == 1 ]]; then \
	  tmp=$$(mktemp -d); \
	  start=$$(date +%s); \
	  ROUTER_CONTROLLER_CACHE=$$tmp/cache GOCACHE=$$tmp/gocache bash hack/build-control-plane.sh >/dev/null; \
	  echo "cold build (empty Go build cache, modules already downloaded): $$(( $$(date +%s) - start )) s"; \
	  rm -rf "$$tmp"; \
	fi
	$(PY) -m router_controller_dev.envtest --print-only

.PHONY: helm
helm: ## Build (once per machine, cached) the Helm command the chart tests use; HELM=/path/to/helm skips it.
	bash hack/build-helm.sh

.PHONY: cluster
cluster: venv controlplane ## Start a local control plane and print its kubeconfig; Ctrl-C stops it.
	$(PY) -m router_controller_dev.envtest

.PHONY: run
run: venv ## Run the operator from source against the current kubeconfig; without a cluster, on a local control plane with the sample and a stand-in router.
	$(NEED_KUBECTL)
	$(PY) -m router_controller_dev.devrun $(ARGS)

.PHONY: lint
lint: venv ## ruff check, ruff format --check, mypy (strict), and the import layers (docs/architecture.md).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=operator $(VENV)/bin/lint-imports --no-cache

.PHONY: test
test: venv controlplane helm ## Run every test (unit and on a real control plane).
	$(NEED_KUBECTL)
	$(VENV)/bin/pytest

.PHONY: bench
bench: venv controlplane ## Run the benchmarks (bench/run.py) and print their figures.
	@test -f bench/run.py || { echo "error: bench/run.py is not in this checkout" >&2; exit 1; }
	$(PY) -m bench.run $(ARGS)

# A production-stack checkout (or its src/ folder) for router-conformance.
ROUTER_SRC ?=

.PHONY: router-conformance
router-conformance: venv ## Run the operator's files on a real vllm_router: make router-conformance ROUTER_SRC=<production-stack checkout>.
	VENV=$(VENV) bash hack/router-conformance.sh "$(ROUTER_SRC)"

##@ Build

.PHONY: docker-build
docker-build: ## Build the operator image IMG with CONTAINER_TOOL (default docker).
	$(call need,$(CONTAINER_TOOL),install Docker (https://docs.docker.com/get-docker/) or set CONTAINER_TOOL=podman)
	@$(CONTAINER_TOOL) info >/dev/null 2>&1 || { echo "error: no $(CONTAINER_TOOL) engine is reachable (is the daemon running, may this user use it?); the image cannot be built here" >&2; exit 1; }
	$(CONTAINER_TOOL) build -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push the operator image IMG.
	$(call need,$(CONTAINER_TOOL),install Docker (https://docs.docker.com/get-docker/) or set CONTAINER_TOOL=podman)
	@$(CONTAINER_TOOL) info >/dev/null 2>&1 || { echo "error: no $(CONTAINER_TOOL) engine is reachable (is the daemon running, may this user use it?); the image cannot be pushed from here" >&2; exit 1; }
	$(CONTAINER_TOOL) push $(IMG)

.PHONY: build-installer
build-installer: ## Write dist/install.yaml: the CRD and everything of config/default, with image IMG.
	$(NEED_KUBECTL)
	mkdir -p dist
	KUBECTL=$(KUBECTL) bash hack/render-default.sh $(IMG) > dist/install.yaml.tmp
	mv dist/install.yaml.tmp dist/install.yaml
	@echo "wrote dist/install.yaml (image $(IMG)); install it with: kubectl apply -f dist/install.yaml"

.PHONY: helm-chart
helm-chart: venv ## Regenerate the Helm chart in dist/chart from config/ (CRD, RBAC, Deployment defaults, alerts, dashboard).
	$(PY) hack/helm_chart.py

##@ Deployment

.PHONY: install
install: ## Install the StaticRoute CRD into the cluster of the current kubeconfig.
	$(NEED_KUBECTL)
	$(KUBECTL) apply -k config/crd

.PHONY: uninstall
uninstall: ## Remove the StaticRoute CRD (and with it every StaticRoute) from the cluster.
	$(NEED_KUBECTL)
	$(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -k config/crd

.PHONY: deploy
deploy: ## Deploy the operator (config/default, image IMG) to the cluster of the current kubeconfig.
	$(NEED_KUBECTL)
	KUBECTL=$(KUBECTL) bash hack/render-default.sh $(IMG) | $(KUBECTL) apply -f -

.PHONY: undeploy
undeploy: ## Remove everything `make deploy` created, the CRD included.
	$(NEED_KUBECTL)
	KUBECTL=$(KUBECTL) bash hack/render-default.sh $(IMG) | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -
