"""A router endpoint's probe state and the status report built from it: pure, no I/O.

Kept apart from the scheduler in :mod:`router_controller.health` so that every rule
(how a ``/health`` answer is judged, when thresholds flip an endpoint, which
condition and message a set of endpoints gives) is tested without a server.

Everything a router sends is untrusted and unbounded, and the status it lands in is
not: the API server refuses (422) a condition message over 32,768 characters, and
etcd an object over about 1.5 MiB, and a refused status write leaves the old
``Ready=True`` in place. So this module bounds every text on its way in
(:func:`clip`: a router's own words are cut to :data:`MAX_ROUTER_TEXT` characters, an
endpoint's message to :data:`MAX_ENDPOINT_MESSAGE`), a condition names at most
:data:`MAX_NAMED` endpoints and counts the rest (:func:`summarise`: "12 of 600
endpoint(s) unhealthy: a: ...; b: ...; c: ... and 9 more"), and ``status.routers``
lists at most :data:`MAX_LISTED` endpoints, those with a problem first. Whatever the
routers answer, a status then stays under about 0.7 MiB and every message under 4 KiB.
Other parts may reuse :func:`clip` and :func:`summarise` for their own messages.

A healthy router that serves another config than the file is *pending* for a while
after a change, and then *not applied*. The window, :data:`CONFIG_NOT_APPLIED_AFTER`,
is derived from documented figures: the kubelet projects a changed ConfigMap into a
mounted volume within its sync period (``--sync-frequency``, 1 minute by default)
plus the propagation delay of its ConfigMap cache (at most the cache's TTL, 1 minute
by default; "Mounted ConfigMaps are updated automatically" in the Kubernetes docs),
and vllm_router's ``DynamicConfigWatcher`` then re-reads the file every 10 s
(``watch_interval`` 10 in its ``app.py``); three re-reads are allowed, so that one
slow read or a probe in between does not raise a false alarm: 60 + 60 + 3 x 10 =
150 s. It starts at the later of two times: when the ConfigMap's content last changed
(``status.lastAppliedTime``: the kubelet cannot have projected it earlier) and when
this endpoint was first seen serving the config it serves now (a replica that comes
up or recovers later, or that moved to yet another config, gets a window of its own;
:meth:`EndpointState.observe`). Once it lapsed the endpoint is reported as
``ConfigNotApplied``, which a restarted operator resumes from ``status.routers``
instead of starting another window (:meth:`EndpointState.resume`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router_controller import conditions as cond
from router_controller.api import Condition, HealthCheck, LabelSelector, RouterStatus
from router_controller.clock import parse_time
from router_controller.routerconfig import ROUTER_KEYS, config_mismatches

# The most of a /health answer that is read. vllm_router answers with its status and
# its dynamic_config: 17 keys, of which at most seven free strings (backends, models,
# aliases, labels, types, prefill and decode labels) that the CRD caps at 8 KiB each,
# so a real answer is under 60 KiB even at the limits and a few hundred bytes usually.
# 256 KiB leaves four times that; the kubelet, for comparison, reads 10 KiB of a probe
# body. A longer answer is not read any further and counts as a failed probe.
MAX_HEALTH_BODY = 256 * 1024
MAX_ROUTER_TEXT = 200  # characters of anything a router wrote (a status, a reason phrase)
MAX_ENDPOINT_MESSAGE = 512  # characters of one endpoint's message in status.routers
MAX_NAMED = 5  # endpoints named in one condition message; the others are counted
MAX_LISTED = 1000  # entries of status.routers

KUBELET_SYNC_PERIOD = 60.0  # the kubelet's --sync-frequency default
KUBELET_CONFIGMAP_CACHE_TTL = 60.0  # the kubelet's ConfigMap cache TTL default
ROUTER_REREAD_INTERVAL = 10.0  # vllm_router's DynamicConfigWatcher watch_interval
ROUTER_REREADS = 3  # re-reads allowed after the kubelet projected the file
CONFIG_NOT_APPLIED_AFTER = (
    KUBELET_SYNC_PERIOD + KUBELET_CONFIGMAP_CACHE_TTL + ROUTER_REREADS * ROUTER_REREAD_INTERVAL
)

SYNC_DELAY_NOTE = (
    "(a router re-reads its file about every 10 s after the kubelet updates the mounted "
    "ConfigMap, which takes up to 2 minutes)"
)
# How an endpoint's message starts, in status.routers, while it is pending or once its
# window lapsed; :meth:`EndpointState.resume` reads them back after a restart.
SERVES_ANOTHER = "healthy, but serves another config"
NOT_APPLIED = "healthy, but has not applied the current config within"
NOT_APPLIED_HINT = (
    'Look in the router\'s log for "DynamicConfigWatcher: Error loading config file" '
    "(it refused the file, and says why); without such a line, check that the router Pods "
    "mount this StaticRoute's ConfigMap (status.configMapRef) as a volume, not with subPath, "
    "and are started with --dynamic-config-json pointing at its dynamic_config.json"
)


def posix_time(stamp: str | None) -> float | None:
    """An RFC 3339 time (``2026-01-01T00:00:00Z``) as POSIX seconds; None if it is not one."""
    moment = parse_time(stamp)
    return None if moment is None else moment.timestamp()


def duration(seconds: float) -> str:
    """150 -> "2m30s", 3 -> "3s": as a Go time.Duration prints whole seconds."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def clip(text: str, limit: int = MAX_ROUTER_TEXT) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "\u2026"


def summarise(items: Sequence[str], total: int | None = None, limit: int = MAX_NAMED) -> str:
    """ "a; b; c and 9 more": the first ``limit`` items, then how many were left out.

    ``total`` is the number of items when ``items`` holds only the first of them.
    """
    count = len(items) if total is None else total
    shown = "; ".join(items[:limit])
    rest = count - min(len(items), limit)
    return f"{shown} and {rest} more" if rest > 0 else shown


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
class RouterReport:
    """What the probes know about a StaticRoute's routers, for its status."""

    conditions: list[Condition]  # RouterHealthy, RouterConfigSynced (no timestamps yet)
    routers: list[RouterStatus]
    ready: bool


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One ``GET /health``: whether the router answered healthy, and what it runs."""

    ok: bool
    message: str = ""  # how it failed; empty on success
    config: dict[str, Any] | None = None  # its dynamic_config; None when it sent none


def too_long(status: int) -> ProbeResult:
    """The result for an answer longer than :data:`MAX_HEALTH_BODY` (not read further)."""
    return ProbeResult(
        False,
        f"GET /health answered {status} with a body over {MAX_HEALTH_BODY // 1024} KiB, "
        "not read further: a router's answer is a few KiB; is this address the router?",
    )


def read_health(status: int, reason: str, body: bytes) -> ProbeResult:
    """Judge a ``/health`` answer the way vllm_router gives it.

    ``body`` is at most :data:`MAX_HEALTH_BODY` bytes (the caller stops reading
    there), so parsing it takes a few milliseconds at worst. What the router wrote is
    clipped before it goes into a message, and only the keys a router's config can
    have are kept from its ``dynamic_config``.
    """
    if len(body) > MAX_HEALTH_BODY:
        return too_long(status)
    if status != 200:
        return ProbeResult(False, f"GET /health answered {status} {clip(reason)}".rstrip())
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return ProbeResult(False, "GET /health answered 200 but its body is not JSON")
    if not isinstance(answer, dict):
        return ProbeResult(False, "GET /health answered 200 but not with a JSON object")
    status_text = answer.get("status", "healthy")
    if status_text != "healthy":
        return ProbeResult(False, f"GET /health answered 200 with status {clip(repr(status_text))}")
    config = answer.get("dynamic_config")
    if not isinstance(config, dict):
        return ProbeResult(True)
    return ProbeResult(True, config={k: v for k, v in config.items() if k in ROUTER_KEYS})


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
    not_applied: bool = False  # serves another config after CONFIG_NOT_APPLIED_AFTER


@dataclass
class EndpointState:
    """Consecutive probe results folded into a state, with Kubernetes probe thresholds.

    The state starts undecided. ``failure_threshold`` consecutive failures make the
    endpoint unhealthy, ``success_threshold`` consecutive successes healthy; fewer
    leave the previous state as it was, as the kubelet does.

    ``config_since`` is when the endpoint was first seen serving the config it serves
    now (POSIX seconds, from the ``now`` given to :meth:`observe`); with the time the
    file last changed it opens the window after which a config it does not serve is
    reported as not applied rather than pending.
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
    config_since: float | None = None
    keep_since: bool = False  # a resumed config_since, kept by the first answer

    @classmethod
    def resume(cls, address: str, entry: dict[str, Any]) -> EndpointState:
        """Start from a ``status.routers`` entry that describes the current spec.

        An endpoint the status reports as not applied stays so (its window lapsed
        before the restart: ``config_since`` is the distant past); one reported as
        serving another config resumes its window from the entry's ``lastProbeTime``,
        when it was first reported so. The first answer keeps that time.
        """
        healthy = entry.get("healthy")
        synced = bool(entry.get("configSynced")) if healthy else None
        message = clip(str(entry.get("message") or ""), MAX_ENDPOINT_MESSAGE)
        stale = bool(healthy) and synced is False
        view = EndpointView(
            address,
            bool(healthy),
            synced,
            message,
            not_applied=stale and _says_not_applied(message),
        )
        since = None
        if view.not_applied:
            since = -math.inf
        elif stale and message.startswith(SERVES_ANOTHER):
            since = posix_time(entry.get("lastProbeTime"))
        return cls(
            address,
            healthy=bool(healthy),
            failure="" if healthy else view.message,
            resumed=view,
            config_since=since,
            keep_since=since is not None,
        )

    def observe(self, result: ProbeResult, check: HealthCheck, *, now: float | None = None) -> None:
        """Fold in one probe's result; ``now`` (POSIX seconds) is when it ran."""
        self.resumed = None
        if result.ok:
            self.successes += 1
            self.failures = 0
            if result.config != self.config and not self.keep_since:
                self.config_since = now
            self.keep_since = False
            self.config = result.config
            if self.successes >= check.success_threshold:
                self.healthy = True
        else:
            self.failures += 1
            self.successes = 0
            self.failure = clip(result.message, MAX_ENDPOINT_MESSAGE)
            if self.failures >= check.failure_threshold:
                self.healthy = False
                self.config = None
                self.config_since = None
                self.keep_since = False

    def view(
        self,
        expected: dict[str, Any] | None,
        *,
        now: float | None = None,
        applied_at: float | None = None,
        window: float = CONFIG_NOT_APPLIED_AFTER,
    ) -> EndpointView:
        """The endpoint as the status shows it, its config compared with ``expected``.

        ``now`` and ``applied_at`` (when the file last changed) are POSIX seconds;
        without ``now`` a config that differs is pending however long it has.
        """
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
            keys = ", ".join(different)
            if self._lapsed(now, applied_at, window):
                return EndpointView(
                    self.address,
                    True,
                    False,
                    f"{NOT_APPLIED} {duration(window)} of the change ({keys} differ)",
                    not_applied=True,
                )
            return EndpointView(self.address, True, False, f"{SERVES_ANOTHER} ({keys} differ)")
        return EndpointView(self.address, True, True, "healthy, serving the current config")

    def _lapsed(self, now: float | None, applied_at: float | None, window: float) -> bool:
        """Whether the window for serving the current file is over (see the module doc)."""
        if now is None or self.config_since is None:
            return False
        start = max(self.config_since, -math.inf if applied_at is None else applied_at)
        return now - start >= window


def _says_not_applied(message: str) -> bool:
    """Whether an endpoint's message in ``status.routers`` says its window lapsed."""
    return message.startswith(NOT_APPLIED)


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
    lapsed = [v for v in stale if v.not_applied]
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
    elif lapsed:
        synced = cond.condition(
            cond.ROUTER_CONFIG_SYNCED,
            False,
            "ConfigNotApplied",
            f"{len(lapsed)} of {len(live)} healthy endpoint(s) do not apply the current config: "
            f"{_list(lapsed)}. {NOT_APPLIED_HINT}",
            generation,
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

    listed = _listed(views)
    if len(listed) < len(views):
        healthy = healthy.model_copy(
            update={
                "message": f"{healthy.message} (status.routers lists {len(listed)} of "
                f"{len(views)} endpoints, those with a problem first)"
            }
        )
    routers = [
        RouterStatus(
            address=v.address,
            healthy=bool(v.healthy),
            config_synced=bool(v.synced),
            message=clip(v.message, MAX_ENDPOINT_MESSAGE),
            last_probe_time=v.last_probe_time or None,
        )
        for v in listed
    ]
    ready = healthy.status == "True" and synced.status == "True"
    return RouterReport(conditions=[healthy, synced], routers=routers, ready=ready)


def _list(views: Sequence[EndpointView]) -> str:
    """The first :data:`MAX_NAMED` endpoints with their messages, and a count of the rest."""
    return summarise(
        [f"{v.address}: {clip(v.message, MAX_ENDPOINT_MESSAGE)}" for v in views[:MAX_NAMED]],
        total=len(views),
    )


def _listed(views: Sequence[EndpointView]) -> list[EndpointView]:
    """At most :data:`MAX_LISTED` endpoints, in address order: problems first, then the rest."""
    if len(views) <= MAX_LISTED:
        return list(views)
    problems = [v for v in views if not (v.healthy and v.synced is not False)]
    fine = [v for v in views if v.healthy and v.synced is not False]
    chosen = {v.address for v in (problems + fine)[:MAX_LISTED]}
    return [v for v in views if v.address in chosen]
