# The operator image: `make docker-build IMG=...`.
#
# Two stages on the same slim Python 3.11 base. The first builds a virtualenv with the
# operator and exactly the dependency versions of constraints.txt; the second holds only
# that virtualenv and runs it as uid 65532, with an exec-form ENTRYPOINT so that no
# shell is needed at run time. The Deployment (config/manager) passes flags as `args`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/router-controller
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
# operator/router_controller_dev (development tooling) is left out by .dockerignore,
# and the wheel packages router_controller alone.
COPY operator/ operator/
# The CRD that `router-controller check` reads is package data: a symlink from
# operator/router_controller/crd/ to this file, copied into the wheel.
COPY config/crd/bases/ config/crd/bases/
# The operator and its runtime dependencies, at exactly the versions pinned in
# constraints.txt (the development tools there are not installed).
RUN /opt/router-controller/bin/pip install -c constraints.txt . \
    && /opt/router-controller/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="router-controller" \
      org.opencontainers.image.description="Kubernetes operator for the vLLM production-stack router's dynamic config"
ENV PATH=/opt/router-controller/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/router-controller /opt/router-controller
USER 65532:65532
ENTRYPOINT ["/opt/router-controller/bin/router-controller"]
