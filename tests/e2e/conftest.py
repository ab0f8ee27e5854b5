"""Fixtures for tests against the real control plane: an API client and a running operator.

The session ``operator`` runs the real Manager (informers, queue, workers, prober)
in the test's event loop, watching all namespaces; tests that need other flags start
their own with :func:`run_operator`. Tests observe only what a user can observe:
objects, status and events through the API, and HTTP endpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from router_controller.kube import Kube
from router_controller.manager import Manager
from router_controller_dev.envtest import ControlPlane
from tests.e2e.processes import background, grants, operators
from tests.e2e.support import admin_kube, run_operator

__all__ = ["background", "grants", "operators"]  # fixtures for operator processes


@pytest.fixture(scope="session")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


@pytest.fixture(scope="session")
async def operator(control_plane: ControlPlane) -> AsyncIterator[Manager]:
    async with run_operator(control_plane) as manager:
        yield manager


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as exits:
        yield exits
