"""A graceful stop fits the Pod's grace period, even with writes that hang.

The kubelet sends SIGTERM, waits ``terminationGracePeriodSeconds`` (read here from
config/manager/manager.yaml, so the test and the manifest cannot drift apart), then
SIGKILLs. If the Lease is not released by then, the next leader waits for it to expire.
The worst case is a stop while reconciles are stuck in a write: here every ConfigMap
create of the test's namespace waits on a slow validating admission webhook (a real
HTTPS server the test runs, which the API server calls with its full 30 s timeout), so
the in-flight reconciles cannot finish and more keys are queued behind them. The
operator runs as a process with the manifest's own flags, so its defaults
(``--shutdown-timeout``, the renew deadline) are the ones a Deployment gets.

This module has a control plane of its own: a webhook that stalls ConfigMap writes for
30 s must not slow the session's in-process operator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from router_controller.kube import CONFIGMAPS, LEASES, Kube, NotFound, Object
from router_controller_dev import envtest
from router_controller_dev.envtest import ControlPlane
from router_controller_dev.pki import serving_cert
from tests.e2e.processes import SHUTDOWN_LEAKS, Spawn
from tests.e2e.support import REPO, admin_kube, create_route, staticroute, wait_for

pytestmark = pytest.mark.cluster

MANIFEST = REPO / "config" / "manager" / "manager.yaml"
STUCK_ROUTES = 12  # more than the default 4 workers: some wait in the queue
WEBHOOK_TIMEOUT = 30  # the most the API server allows; it then lets the write through
HANG_LIMIT = 60.0  # a request the webhook holds is answered after this at the latest


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with envtest.running(crds=True) as plane:
        yield plane


@pytest.fixture(scope="module")
async def kube(control_plane: ControlPlane) -> AsyncIterator[Kube]:
    async with admin_kube(control_plane) as client:
        yield client


def manager_pod() -> dict[str, Any]:
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc and doc.get("kind") == "Deployment":
            spec: dict[str, Any] = doc["spec"]["template"]["spec"]
            return spec
    raise AssertionError(f"no Deployment in {MANIFEST}")


def manifest_flags() -> list[str]:
    """The manager container's args, less the listen addresses (tests bind port 0)."""
    (container,) = [c for c in manager_pod()["containers"] if c["name"] == "manager"]
    binds = ("--metrics-bind-address", "--health-probe-bind-address")
    return [arg for arg in container["args"] if not arg.startswith(binds)]


# -- a slow validating webhook -------------------------------------------------------------


def _tls(folder: Path) -> tuple[ssl.SSLContext, bytes]:
    """A server context for 127.0.0.1 and the PEM of the CA that signed it."""
    made = serving_cert(
        folder, name="tls", ca_name="slow-webhook-ca", common_name="127.0.0.1", days=1
    )
    return made.server_context(), made.ca_pem


@dataclass
class SlowWebhook:
    """Admits every ConfigMap write, but only after holding it (dry runs at once)."""

    dry_runs: int = 0
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        if review["request"].get("dryRun"):
            self.dry_runs += 1
        else:
            self.held += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), HANG_LIMIT)
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True},
        }
        return web.json_response(answer)


@pytest.fixture
async def slow_webhook(
    control_plane: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> AsyncIterator[SlowWebhook]:
    webhook = SlowWebhook()
    context, ca = _tls(tmp_path)
    app = web.Application()
    app.router.add_post("/validate", webhook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    name = f"slow-{namespace}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "slow.configmaps.example.com",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate",
                    "caBundle": base64.b64encode(ca).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configmaps"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": WEBHOOK_TIMEOUT,
            }
        ],
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(config))
    try:

        async def in_force() -> bool:
            probe = {"metadata": {"name": "probe", "namespace": namespace}}
            await kube.request(
                "POST", CONFIGMAPS.path(namespace), params={"dryRun": "All"}, body=probe
            )
            return webhook.dry_runs > 0

        await wait_for(in_force, what="the webhook called by the API server")
        yield webhook
    finally:
        webhook.release.set()
        control_plane.kubectl("delete", "validatingwebhookconfiguration", name, check=False)
        await runner.cleanup()


async def lease_holder(kube: Kube, namespace: str, name: str) -> str | None:
    """The Lease's holder ("" when released), None while there is no Lease."""
    try:
        lease: Object = await kube.get(LEASES.path(namespace, name))
    except NotFound:
        return None
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


async def test_sigterm_with_stuck_writes_releases_the_lease_within_the_grace_period(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operators: Spawn,
    slow_webhook: SlowWebhook,
) -> None:
    grace = float(manager_pod()["terminationGracePeriodSeconds"])
    for i in range(STUCK_ROUTES):
        await create_route(kube, staticroute(f"r{i}", namespace))
    lease = f"lease-{uuid.uuid4().hex[:8]}"
    process = operators(
        control_plane.kubeconfig,
        *manifest_flags(),
        f"--leader-election-namespace={namespace}",
        f"--leader-election-id={lease}",
        f"--namespaces={namespace}",
    )
    identity = await process.identity()

    async def leading() -> bool:
        return await lease_holder(kube, namespace, lease) == identity

    await wait_for(leading, timeout=60, what="the operator to lead")
    await wait_for(lambda: slow_webhook.held > 0, timeout=60, what="a ConfigMap write held")

    sent = time.monotonic()
    process.signal(signal.SIGTERM)
    # What the kubelet allows: exit, with the Lease released, before the grace period ends.
    assert await process.exit_code(timeout=grace) == 0, process.output
    print(f"exited {time.monotonic() - sent:.1f}s after SIGTERM (grace period {grace:g}s)")
    assert await lease_holder(kube, namespace, lease) == ""
    stopping = process.find("shutting down")
    assert stopping is not None
    assert stopping["queued"] > 0, "work was queued behind the stuck writes"
    assert process.find("released leadership") is not None
    output = process.output
    for leak in SHUTDOWN_LEAKS:
        assert leak not in output, f"{leak!r} in the operator's output:\n{output}"
