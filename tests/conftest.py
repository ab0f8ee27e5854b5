"""Shared fixtures: one real control plane per test session, a fresh namespace per test.

The plane is started lazily, by the first test that asks for it, so pure unit tests
run without building or starting anything.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from router_controller_dev import envtest, repo


def pytest_configure(config: pytest.Config) -> None:
    # pytest found the repository (its rootdir holds pyproject.toml); tell the
    # development package, and the programs the tests start, wherever they run.
    os.environ.setdefault(repo.ENV, str(config.rootpath))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[envtest.ControlPlane]:
    with envtest.running(crds=True) as plane:
        yield plane


@pytest.fixture
def namespace(control_plane: envtest.ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
