"""The Deployment's grace period covers the longest graceful stop its flags allow.

The kubelet sends SIGTERM, waits ``terminationGracePeriodSeconds``, then SIGKILLs.
A graceful stop runs ``--shutdown-timeout`` for in-flight reconciles, then the Event
drain, then the Lease release (bounded by the renew deadline): if their sum does not
fit, SIGKILL can land before the Lease is released and the next leader waits for it to
expire. The flags are read from the manifest's own ``args``, so a flag added there is
held to the grace period too. The real stop is exercised in tests/e2e/test_shutdown.py.
"""

from __future__ import annotations

from typing import Any

import yaml

from router_controller.cli import settings_from
from router_controller.manager import shutdown_budget
from router_controller_dev import repo

MANIFEST = repo.root() / "config" / "manager" / "manager.yaml"
MARGIN = 5.0  # seconds for the interpreter to exit after the release


def deployment() -> dict[str, Any]:
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc and doc.get("kind") == "Deployment":
            return dict(doc)
    raise AssertionError(f"no Deployment in {MANIFEST}")


def test_grace_period_covers_the_longest_graceful_stop() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "manager"]
    settings = settings_from(list(container["args"]))
    assert settings.leader_election.enabled
    grace = float(pod["terminationGracePeriodSeconds"])
    budget = shutdown_budget(settings)
    assert budget + MARGIN <= grace, (
        f"a graceful stop may take {budget:g}s but the Pod gets {grace:g}s after SIGTERM"
    )
