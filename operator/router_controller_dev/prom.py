"""Reading Prometheus text: the API server's request counts and the operator's metrics.

The benchmark and :class:`~router_controller_dev.processes.OperatorProcess` read
``/metrics`` of the operator and of the API server with these. Writes are counted
from the API server's own ``apiserver_request_total``, split by resource and verb,
not from the operator's client-side counter: the server's count cannot miss a
request the operator forgot to count. Only the series the benchmark
needs are parsed, so a multi-megabyte scrape of the API server stays cheap.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"})
# The kinds the operator writes (StaticRoute status, ConfigMaps, Events).
OPERATOR_RESOURCES = frozenset({"staticroutes", "configmaps", "events"})

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


def samples(text: str, names: Iterable[str]) -> Iterator[Sample]:
    """(name, labels, value) of every sample whose metric name is in ``names``."""
    wanted = tuple(names)
    for line in text.splitlines():
        if not line or line[0] == "#" or not line.startswith(wanted):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, labels = head.partition("{")
        if name not in wanted:
            continue
        parsed = dict(_LABEL.findall(labels)) if brace else {}
        yield name, parsed, float(value)


def writes_by_resource(apiserver_metrics: str) -> Counter[str]:
    """Write requests so far on the operator's kinds.

    Keyed "VERB resource[/subresource]", with " (CODE)" added for answers other than
    2xx: a refused write (409 on a stale resourceVersion) is still a request the API
    server had to handle, and shows up apart.
    """
    counts: Counter[str] = Counter()
    for _, labels, value in samples(apiserver_metrics, ("apiserver_request_total",)):
        resource = labels.get("resource", "")
        if labels.get("verb") not in WRITE_VERBS or resource not in OPERATOR_RESOURCES:
            continue
        sub = labels.get("subresource", "")
        code = labels.get("code", "")
        key = f"{labels['verb']} {resource}{'/' + sub if sub else ''}"
        counts[key if code.startswith("2") else f"{key} ({code})"] += int(value)
    return counts


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    """The non-zero increases between two counts."""
    return {key: after[key] - before[key] for key in sorted(after) if after[key] > before[key]}


def total(text: str, metric: str, /, **match: str) -> float:
    """Sum of a metric's samples whose labels include ``match``."""
    return sum(
        value
        for _, labels, value in samples(text, (metric,))
        if all(labels.get(k) == v for k, v in match.items())
    )
