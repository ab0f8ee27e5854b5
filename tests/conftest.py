"""Shared fixtures: one real control plane per test session, a fresh namespace per test.

The plane is started lazily, by the first test that asks for it, so pure unit tests
run without building or starting anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from router_controller import envtest

REPO = Path(__file__).resolve().parents[1]


def install_crds(plane: envtest.ControlPlane) -> None:
    plane.kubectl("apply", "--server-side", "-k", str(REPO / "config" / "crd"))
    plane.kubectl(
        "wait", "--for=condition=Established", "crd/staticroutes.production-stack.vllm.ai"
    )


@pytest.fixture(scope="session")
def control_plane() -> Iterator[envtest.ControlPlane]:
    with envtest.running() as plane:
        install_crds(plane)
        yield plane


@pytest.fixture
def namespace(control_plane: envtest.ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
