"""A router that keeps serving its old config is ``ConfigNotApplied``, not pending forever.

The router here is a :class:`FakeRouter` that ignores every reload (``frozen``), as a
router does whose file never changes (no volume mount, a ``subPath`` mount, another
ConfigMap) or that refuses the file: its ``/health`` keeps showing the config it
started with. The operator runs with a window of a few seconds instead of the
documented 2m30s (``Settings.config_not_applied_after``), which is the only thing
shortened: the StaticRoute must go from pending to ``ConfigNotApplied`` with a Warning
Event, stay so across an operator restart without a status write, and clear with the
normal Event as soon as the router serves the file.

The module has a control plane of its own: the session operator, which watches every
namespace with the documented window, would otherwise report the same StaticRoute
as pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from router_controller.kube import Kube, Object
from router_controller.routerstate import NOT_APPLIED
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.fakerouter import FakeRouter, expose
from tests.e2e.support import (
    admin_kube,
    condition,
    create_route,
    events_for,
    get_route,
    run_operator,
    settled,
    staticroute,
    try_get_cm,
    wait_condition,
    wait_for,
)

WINDOW = 3.0  # seconds; the documented default is CONFIG_NOT_APPLIED_AFTER (150 s)
FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 1}
# What the default staticroute() renders to: the file the router started with.
STARTUP_CONFIG = {
    "routing_logic": "roundrobin",
    "service_discovery": "static",
    "static_backends": "http://a.example.com:8000,http://10.1.2.3:8000",
    "static_models": "model-a,model-b",
}


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with envtest.running(controller_manager=False, crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


def synced_condition(route: Object) -> dict[str, str]:
    found = condition(route, "RouterConfigSynced")
    assert found is not None, f"RouterConfigSynced missing from {route.get('status')}"
    return found


async def events(kube: Kube, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in await events_for(kube, namespace, name)]


async def test_a_router_that_keeps_its_old_config_is_reported_and_then_clears(
    control_plane: ControlPlane, kube: Kube, namespace: str
) -> None:
    async with FakeRouter() as router:
        assert router.load(STARTUP_CONFIG)
        router.frozen = True  # from now on it keeps what it runs, whatever its file says
        await expose(kube, namespace, "router", [router])
        only = (namespace,)

        async with run_operator(
            control_plane, namespaces=only, config_not_applied_after=WINDOW
        ) as operator:
            await create_route(
                kube,
                staticroute(
                    "r",
                    namespace,
                    staticModels="model-a,model-c",
                    routerRef={"name": "router"},
                    healthCheck=FAST,
                ),
            )
            cm: Object = await wait_for(
                lambda: try_get_cm(kube, namespace, "r-config"), what="the ConfigMap"
            )
            assert not router.load_configmap(cm), "the router must keep its old config"

            route = await wait_condition(
                kube, namespace, "r", "RouterConfigSynced", "False", reason="ConfigNotApplied"
            )
            message = synced_condition(route)["message"]
            assert router.address in message
            assert "static_models differ" in message
            assert "DynamicConfigWatcher: Error loading config file" in message
            assert "--dynamic-config-json" in message
            ready = condition(route, "Ready")
            assert ready is not None
            assert (ready["status"], ready["reason"]) == ("False", "ConfigNotApplied")
            assert (condition(route, "RouterHealthy") or {}).get("status") == "True"
            [entry] = route["status"]["routers"]
            assert (entry["healthy"], entry["configSynced"]) == (True, False)
            assert entry["message"].startswith(f"{NOT_APPLIED} 3s")
            assert router.dynamic_config["static_models"] == "model-a,model-b", "still the old"

            async def warned() -> bool:
                return ("Warning", "ConfigNotApplied") in await events(kube, namespace, "r")

            await wait_for(warned, what="a Warning ConfigNotApplied event")
            await settled(operator, kube, namespace, "r")

        # A restarted operator resumes the lapsed window from the status: it does not
        # report the router as pending again (and write twice) while a window passes.
        version = (await get_route(kube, namespace, "r"))["metadata"]["resourceVersion"]
        patches = await asyncio.to_thread(
            control_plane.request_count, "PATCH", "staticroutes", "status"
        )
        async with run_operator(
            control_plane, namespaces=only, config_not_applied_after=WINDOW
        ) as second:
            probed = router.requests
            # Probes over more than a window: a reset window would have lapsed again.
            await wait_for(
                lambda: router.requests >= probed + int(WINDOW) + 2,
                what="the new operator's probes over a window",
            )
            await settled(second, kube, namespace, "r")
            after = await get_route(kube, namespace, "r")
            assert synced_condition(after)["reason"] == "ConfigNotApplied"
            assert after["metadata"]["resourceVersion"] == version, (
                f"status rewritten after the restart: {synced_condition(after)}"
            )
            assert (
                await asyncio.to_thread(
                    control_plane.request_count, "PATCH", "staticroutes", "status"
                )
                == patches
            )

            # The router takes the file: synced at once, with the normal event.
            router.frozen = False
            assert router.load_configmap(cm)
            cleared = await wait_condition(kube, namespace, "r", "Ready", "True")
            assert synced_condition(cleared)["reason"] == "ConfigSynced"
            assert cleared["status"]["routers"][0]["configSynced"] is True

            async def normal() -> bool:
                return ("Normal", "RouterConfigSynced") in await events(kube, namespace, "r")

            await wait_for(normal, what="a Normal RouterConfigSynced event")
