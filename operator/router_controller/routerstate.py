"""A router endpoint's probe state and the status report built from it: pure, no I/O.

Kept apart from the scheduler in :mod:`router_controller.health` so that every rule
(how a ``/health`` answer is judged, when thresholds flip an endpoint, which
condition and message a set of endpoints gives) is tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router_controller import conditions as cond
from router_controller.api import HealthCheck, LabelSelector
from router_controller.reconciler import RouterReport
from router_controller.routerconfig import config_mismatches

SYNC_DELAY_NOTE = (
    "(a router re-reads its file about every 10 s after the kubelet updates the mounted ConfigMap)"
)


def selector_matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    for k, v in (selector.match_labels or {}).items():
        if labels.get(k) != v:
            return False
    for req in selector.match_expressions or []:
        has = req.key in labels
        values = req.values or []
        if req.operator == "In" and not (has and labels[req.key] in values):
            return False
        if req.operator == "NotIn" and has and labels[req.key] in values:
            return False
        if req.operator == "Exists" and not has:
            return False
        if req.operator == "DoesNotExist" and has:
            return False
    return True


# -- one answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One ``GET /health``: whether the router answered healthy, and what it runs."""

    ok: bool
    message: str = ""  # how it failed; empty on success
    config: dict[str, Any] | None = None  # its dynamic_config; None when it sent none


def read_health(status: int, reason: str, body: bytes) -> ProbeResult:
    """Judge a ``/health`` answer the way vllm_router gives it."""
    if status != 200:
        return ProbeResult(False, f"GET /health answered {status} {reason}".rstrip())
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return ProbeResult(False, "GET /health answered 200 but its body is not JSON")
    if not isinstance(answer, dict):
        return ProbeResult(False, "GET /health answered 200 but not with a JSON object")
    status_text = answer.get("status", "healthy")
    if status_text != "healthy":
        return ProbeResult(False, f"GET /health answered 200 with status {status_text!r}")
    config = answer.get("dynamic_config")
    return ProbeResult(True, config=config if isinstance(config, dict) else None)


# -- one endpoint --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What the status says about one endpoint."""

    address: str
    healthy: bool | None  # None: not decided yet (below both thresholds)
    synced: bool | None  # None: unknown (not healthy, or no config to compare with)
    message: str
    no_dynamic_config: bool = False  # healthy, but its /health carries no dynamic_config
    last_probe_time: str | None = None


@dataclass
class EndpointState:
    """Consecutive probe results folded into a state, with Kubernetes probe thresholds.

    The state starts undecided. ``failure_threshold`` consecutive failures make the
    endpoint unhealthy, ``success_threshold`` consecutive successes healthy; fewer
    leave the previous state as it was, as the kubelet does.
    """

    address: str
    healthy: bool | None = None
    successes: int = 0
    failures: int = 0
    failure: str = ""  # the last failure
    config: dict[str, Any] | None = None  # the dynamic_config of the last healthy answer
    # What an earlier run of the operator wrote on the status for this endpoint, shown
    # until the first probe of this run: a restart then changes (and writes) nothing.
    resumed: EndpointView | None = None

    @classmethod
    def resume(cls, address: str, entry: dict[str, Any]) -> EndpointState:
        """Start from a ``status.routers`` entry that describes the current spec."""
        healthy = entry.get("healthy")
        view = EndpointView(
            address,
            bool(healthy),
            bool(entry.get("configSynced")) if healthy else None,
            str(entry.get("message") or ""),
        )
        return cls(
            address,
            healthy=bool(healthy),
            failure="" if healthy else view.message,
            resumed=view,
        )

    def observe(self, result: ProbeResult, check: HealthCheck) -> None:
        self.resumed = None
        if result.ok:
            self.successes += 1
            self.failures = 0
            self.config = result.config
            if self.successes >= check.success_threshold:
                self.healthy = True
        else:
            self.failures += 1
            self.successes = 0
            self.failure = result.message
            if self.failures >= check.failure_threshold:
                self.healthy = False
                self.config = None

    def view(self, expected: dict[str, Any] | None) -> EndpointView:
        """The endpoint as the status shows it, its config compared with ``expected``."""
        if self.resumed is not None:
            return self.resumed
        if self.healthy is False:
            return EndpointView(self.address, False, None, self.failure)
        if self.healthy is None:
            if self.failures:
                message = self.failure
            elif self.successes:
                message = "answered healthy; waiting for successThreshold consecutive successes"
            else:
                message = "not probed yet"
            return EndpointView(self.address, None, None, message)
        if expected is None:
            return EndpointView(self.address, True, None, "healthy")
        if self.config is None:
            return EndpointView(
                self.address,
                True,
                False,
                "healthy, but its /health answer has no dynamic_config: "
                "is the router started with --dynamic-config-json?",
                no_dynamic_config=True,
            )
        different = config_mismatches(expected, self.config)
        if different:
            return EndpointView(
                self.address,
                True,
                False,
                f"healthy, but serves another config ({', '.join(different)} differ)",
            )
        return EndpointView(self.address, True, True, "healthy, serving the current config")


# -- the report ----------------------------------------------------------------------


def build_report(
    views: Sequence[EndpointView],
    *,
    problem: tuple[str, str] | None,
    has_config: bool,
    generation: int | None,
) -> RouterReport:
    """RouterHealthy, RouterConfigSynced and the ``routers`` list from endpoint views.

    ``problem`` is (reason, message) when no endpoint can be probed at all;
    ``has_config`` says whether there is a ConfigMap of ours to compare with.
    """
    if problem is not None:
        reason, message = problem
        return RouterReport(
            conditions=[
                cond.condition(cond.ROUTER_HEALTHY, False, reason, message, generation),
                cond.condition(cond.ROUTER_CONFIG_SYNCED, None, reason, message, generation),
            ],
            routers=[],
            ready=False,
        )

    unhealthy = [v for v in views if v.healthy is False]
    pending = [v for v in views if v.healthy is None]
    if unhealthy:
        healthy = cond.condition(
            cond.ROUTER_HEALTHY,
            False,
            "RouterUnhealthy",
            f"{len(unhealthy)} of {len(views)} endpoint(s) unhealthy: " + _list(unhealthy),
            generation,
        )
    elif pending:
        healthy = cond.condition(
            cond.ROUTER_HEALTHY,
            None,
            "Probing",
            f"waiting for probe results of {len(pending)} endpoint(s): " + _list(pending),
            generation,
        )
    else:
        healthy = cond.condition(
            cond.ROUTER_HEALTHY,
            True,
            "RouterHealthy",
            f"{len(views)} endpoint(s) healthy",
            generation,
        )

    live = [v for v in views if v.healthy]
    missing = [v for v in live if v.no_dynamic_config]
    stale = [v for v in live if v.synced is False and not v.no_dynamic_config]
    if not has_config:
        synced = cond.condition(
            cond.ROUTER_CONFIG_SYNCED,
            None,
            "NoConfig",
            "no ConfigMap of ours to compare with",
            generation,
        )
    elif missing:
        synced = cond.condition(
            cond.ROUTER_CONFIG_SYNCED, False, "NoDynamicConfig", _list(missing), generation
        )
    elif stale:
        synced = cond.condition(
            cond.ROUTER_CONFIG_SYNCED,
            False,
            "ConfigSyncPending",
            f"{_list(stale)} {SYNC_DELAY_NOTE}",
            generation,
        )
    elif not live:
        synced = cond.condition(
            cond.ROUTER_CONFIG_SYNCED,
            None,
            "Probing",
            "no healthy endpoint to compare the config with yet",
            generation,
        )
    else:
        synced = cond.condition(
            cond.ROUTER_CONFIG_SYNCED,
            True,
            "ConfigSynced",
            f"{len(live)} healthy endpoint(s) serve the current config",
            generation,
        )

    routers = [
        {
            "address": v.address,
            "healthy": bool(v.healthy),
            "configSynced": bool(v.synced),
            "message": v.message,
            **({"lastProbeTime": v.last_probe_time} if v.last_probe_time else {}),
        }
        for v in views
    ]
    ready = healthy["status"] == "True" and synced["status"] == "True"
    return RouterReport(conditions=[healthy, synced], routers=routers, ready=ready)


def _list(views: Sequence[EndpointView]) -> str:
    return "; ".join(f"{v.address}: {v.message}" for v in views)
