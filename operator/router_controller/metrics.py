"""Prometheus metrics under controller-runtime's and client-go's names.

Users run this operator next to Go operators and already have dashboards and
alerts on ``controller_runtime_*``, ``workqueue_*``, ``rest_client_requests_total``
and ``leader_election_master_status``; the names, labels and buckets here are the
ones controller-runtime registers, so those keep working. Router probe metrics are
our own (``router_controller_probe_*``, and ``router_controller_staticroute_condition``
for alerts on StaticRoutes that stay not Ready), with label sets bounded by the number
of StaticRoutes, never by endpoints.

One :class:`Metrics` object owns one registry; it is passed in wherever something
is counted, so tests get a fresh one each.

prometheus_client names a counter without its ``_total`` suffix and appends it when
exporting (``Counter("workqueue_adds")`` exports ``workqueue_adds_total``; a name that
already ends in ``_total`` has it stripped first, so either spelling exports the same).
It also exports a ``*_created`` series per counter and histogram, which Go's client
does not: that is switched off, so a scrape holds the series controller-runtime's does.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


class ProbeOutcome(enum.StrEnum):
    """The ``result`` label of ``router_controller_probe_total``: what one probe found."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # no answer, an error status, or an answer that is not health
    STALE = "stale"  # healthy, but serving another config than the ConfigMap's file


# controller-runtime's reconcile_time_seconds buckets.
_RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7,
    0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15,
    20, 25, 30, 40, 50, 60,
)  # fmt: skip
# client-go workqueue buckets: ExponentialBuckets(10e-9, 10, 12).
_QUEUE_BUCKETS = tuple(10e-9 * 10**i for i in range(12))
_PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60)

RESULTS = ("success", "error", "requeue", "requeue_after")
# Series per piece of the streamed condition exposition (about 100 bytes each).
EXPOSITION_CHUNK = 500
MAX_SHAPES = 256  # distinct sets of (condition type, status) shared between StaticRoutes
CONDITION_STATUSES = ("True", "False", "Unknown")


class Metrics:
    """Every metric the operator exports, registered on one registry."""

    def __init__(self, *, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = registry or CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.terminal_errors = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"],
            buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.max_concurrent = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            ["controller"],
            registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            ["controller"],
            registry=r,
        )
        labels = ["name", "controller"]
        self.queue_depth = Gauge(
            "workqueue_depth", "Current depth of workqueue", labels, registry=r
        )
        self.queue_adds = Counter(
            "workqueue_adds", "Total number of adds handled by workqueue", labels, registry=r
        )
        self.queue_latency = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            labels,
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            labels,
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.unfinished_work = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration. Large values indicate stuck threads.",
            labels,
            registry=r,
        )
        self.longest_running = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            labels,
            registry=r,
        )
        self.queue_retries = Counter(
            "workqueue_retries", "Total number of retries handled by workqueue", labels, registry=r
        )
        self.leader = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease.",
            ["name"],
            registry=r,
        )
        self.rest_requests = Counter(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"],
            registry=r,
        )
        self.watch_malformed = Counter(
            "router_controller_watch_malformed_events",
            "Watch stream lines that were not a well-formed event (each answered with a "
            "re-list), by resource",
            ["resource"],
            registry=r,
        )
        self.events_pending = Gauge(
            "router_controller_events_pending",
            "Events waiting to be sent (they go out behind the reconcile writes)",
            registry=r,
        )
        self.events_dropped = Counter(
            "router_controller_events_dropped",
            "Events not sent, by reason: buffer_full, spam (per-object filter), "
            "send_failed, shutdown",
            ["reason"],
            registry=r,
        )
        self.rest_retries = Counter(
            "rest_client_request_retries",
            "Number of request retries, partitioned by status code, method, and host.",
            ["code", "method", "host"],
            registry=r,
        )
        self.probe_total = Counter(
            "router_controller_probe",
            f"Router /health probes per StaticRoute and result ({', '.join(ProbeOutcome)})",
            ["namespace", "staticroute", "result"],
            registry=r,
        )
        self.probe_duration = Histogram(
            "router_controller_probe_duration_seconds",
            "Router /health probe latency per StaticRoute",
            ["namespace", "staticroute"],
            buckets=_PROBE_BUCKETS,
            registry=r,
        )
        self.routers_unhealthy = Gauge(
            "router_controller_routers_unhealthy",
            "Router endpoints currently unhealthy per StaticRoute",
            ["namespace", "staticroute"],
            registry=r,
        )
        # One small tuple per StaticRoute, turned into series at scrape time: as Gauge
        # children its six series cost about 4 KiB a StaticRoute (44 MiB at 10,000).
        self.staticroute_condition = ConditionCollector()
        r.register(self.staticroute_condition)
        self.probe_lateness = Histogram(
            "router_controller_probe_lateness_seconds",
            "How late router probes start, per namespace: actual start minus scheduled start",
            ["namespace"],
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        # The metrics endpoint's own defences (server.py, metricsauth.py).
        self.metrics_connections_rejected = Counter(
            "router_controller_metrics_connections_rejected",
            "Connections to the metrics port closed early, by reason: limit (refused, every "
            "slot busy), evicted (made room for a newer one), handshake (TLS failed or timed out)",
            ["reason"],
            registry=r,
        )
        self.metrics_auth_reviews = Counter(
            "router_controller_metrics_auth_reviews",
            "Token reviews made for /metrics callers, by result (allowed, unauthenticated, "
            "forbidden, error)",
            ["result"],
            registry=r,
        )
        self.metrics_auth_throttled = Counter(
            "router_controller_metrics_auth_throttled",
            "Requests for /metrics answered 429 because an unknown token found no review permit",
            registry=r,
        )

    def init_controller(self, controller: str, workers: int) -> None:
        """Create every series of a controller at 0, as controller-runtime does.

        controller-runtime creates the reconcile counters and worker gauges when the
        controller starts, and client-go's queue creates all its series (histograms
        too) with the queue; the reconcile histogram is created here as well, so that
        every name is in the first scrape.
        """
        for result in RESULTS:
            self.reconcile_total.labels(controller, result)
        self.reconcile_errors.labels(controller)
        self.terminal_errors.labels(controller)
        self.max_concurrent.labels(controller).set(workers)
        self.active_workers.labels(controller).set(0)
        self.reconcile_time.labels(controller)
        for metric in (
            self.queue_depth,
            self.queue_adds,
            self.queue_latency,
            self.work_duration,
            self.unfinished_work,
            self.longest_running,
            self.queue_retries,
        ):
            metric.labels(controller, controller)

    def staticroute_conditions(
        self, namespace: str, name: str, conditions: Iterable[Mapping[str, Any]]
    ) -> None:
        """Export a StaticRoute's conditions, as kube-state-metrics exports a Node's.

        Each condition type gets one series per possible status, 1 for the current one
        and 0 for the others, so an alert can say ``status!="True"`` and a dashboard can
        count StaticRoutes per status. A type no longer in the status loses its series.
        """
        self.staticroute_condition.set(namespace, name, conditions)

    def exposition(self) -> Exposition:
        """What ``/metrics`` sends: the registry in the text format, in pieces.

        The same text as ``generate_latest(registry)``, with the per-StaticRoute
        condition series last and a few hundred at a time, so that a scrape holds one
        piece of them, not the whole text three times over (lines, joined, encoded): at
        5,000 StaticRoutes that was a 20 MiB peak and 0.4 s of CPU for every scrape.
        """
        conditions = self.staticroute_condition
        rest = [m for m in self.registry.collect() if m.name != conditions.NAME]
        return Exposition(generate_latest(_Collected(rest)), conditions.snapshot())

    def forget_staticroute(self, namespace: str, name: str) -> None:
        """Drop the series of a deleted StaticRoute so label sets stay bounded."""
        self.forget_probes(namespace, name)
        self.staticroute_condition.forget(namespace, name)

    def forget_probes(self, namespace: str, name: str) -> None:
        """Drop a StaticRoute's probe series (it was deleted, or no longer has routers)."""
        for result in ProbeOutcome:
            _remove(self.probe_total, namespace, name, result)
        _remove(self.probe_duration, namespace, name)
        _remove(self.routers_unhealthy, namespace, name)


# ((namespace, name), ((condition type, status), ...)) of every StaticRoute
_Routes = list[tuple[tuple[str, str], tuple[tuple[str, str], ...]]]


class ConditionCollector(Collector):
    """``router_controller_staticroute_condition{namespace,staticroute,type,status}``."""

    NAME = "router_controller_staticroute_condition"
    HELP = (
        "The status of each condition of a StaticRoute, as last written: 1 for the "
        "condition's status (True, False or Unknown), 0 for the other two"
    )

    def __init__(self) -> None:
        # (namespace, name) -> ((type, status), ...)
        self._routes: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        self._shapes: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}

    def set(self, namespace: str, name: str, conditions: Iterable[Mapping[str, Any]]) -> None:
        shape = tuple(
            (sys.intern(str(c["type"])), sys.intern(str(c.get("status"))))
            for c in conditions
            if c.get("type")
        )
        # Most StaticRoutes are in one of a few states: they share its tuple.
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()
        self._routes[(namespace, name)] = self._shapes.setdefault(shape, shape)

    def forget(self, namespace: str, name: str) -> None:
        self._routes.pop((namespace, name), None)

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=_CONDITION_LABELS)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=_CONDITION_LABELS)
        # Built as they are read: 10,000 StaticRoutes are 60,000 samples (some 20 MiB
        # as a list), and whoever reads them (``generate_latest``) goes one by one.
        family.samples = _LazySamples(self.NAME, self.snapshot())  # type: ignore[assignment]
        return [family]

    def snapshot(self) -> _Routes:
        return list(self._routes.items())


class Exposition:
    """A scrape's text, made piece by piece from one snapshot, each time it is iterated.

    ``len()`` is its size in bytes (a first pass that keeps nothing), so it can be
    sent with a ``Content-Length`` and still never be held whole.
    """

    def __init__(self, head: bytes, routes: _Routes, *, chunk: int = EXPOSITION_CHUNK) -> None:
        self._head = head
        self._routes = routes
        self._chunk = chunk

    def __len__(self) -> int:
        return sum(len(piece) for piece in self)

    def __iter__(self) -> Iterator[bytes]:
        """The other metrics (as ``generate_latest`` writes them), then the condition
        series as it writes them too: labels sorted by name, values as Go writes floats."""
        yield self._head
        name = ConditionCollector.NAME
        yield f"# HELP {name} {ConditionCollector.HELP}\n# TYPE {name} gauge\n".encode()
        lines: list[str] = []
        for (namespace, route), conditions in self._routes:
            head = f'{name}{{namespace="{_escape(namespace)}",staticroute="{_escape(route)}",'
            for type_, current in conditions:
                tail = f'type="{_escape(type_)}"}} '
                for status in CONDITION_STATUSES:
                    value = "1.0" if status == current else "0.0"
                    lines.append(f'{head}status="{status}",{tail}{value}\n')
            if len(lines) >= self._chunk:
                yield "".join(lines).encode()
                lines.clear()
        if lines:
            yield "".join(lines).encode()


class _Collected(Collector):
    """Metric families already collected, as a collector ``generate_latest`` can read."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _LazySamples:
    """The condition series as ``Sample``s, made one at a time as they are iterated."""

    def __init__(self, name: str, routes: _Routes) -> None:
        self._name = name
        self._routes = routes

    def __iter__(self) -> Iterator[Sample]:
        for (namespace, name), conditions in self._routes:
            for type_, current in conditions:
                for status in CONDITION_STATUSES:
                    labels = {
                        "namespace": namespace,
                        "staticroute": name,
                        "type": type_,
                        "status": status,
                    }
                    yield Sample(self._name, labels, 1.0 if status == current else 0.0)

    def __len__(self) -> int:
        return sum(len(c) for _, c in self._routes) * len(CONDITION_STATUSES)

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Iterable) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, like a list


def _escape(value: str) -> str:
    """A label value as the text format writes it (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


_CONDITION_LABELS = ["namespace", "staticroute", "type", "status"]


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        return
