"""``router_controller_staticroute_condition``: one series per condition and status, bounded.

Alerts on StaticRoutes that stay not Ready read this gauge, so it must follow the
status as written (a flip moves the 1 to the other status), drop a condition type that
left the status, and drop every series of a StaticRoute that was deleted.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router_controller.metrics import Metrics

NAME = "router_controller_staticroute_condition"


def series(metrics: Metrics) -> dict[tuple[str, str, str, str], float]:
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == NAME:
                labels = sample.labels
                key = (labels["namespace"], labels["staticroute"], labels["type"], labels["status"])
                found[key] = sample.value
    return found


def conditions(**statuses: str) -> list[dict[str, str]]:
    return [{"type": type_, "status": status, "reason": "R"} for type_, status in statuses.items()]


def test_each_condition_has_one_series_per_status_and_follows_flips() -> None:
    metrics = Metrics(process=False)
    metrics.staticroute_conditions("ns", "a", conditions(Ready="False", RouterHealthy="Unknown"))
    assert series(metrics) == {
        ("ns", "a", "Ready", "True"): 0,
        ("ns", "a", "Ready", "False"): 1,
        ("ns", "a", "Ready", "Unknown"): 0,
        ("ns", "a", "RouterHealthy", "True"): 0,
        ("ns", "a", "RouterHealthy", "False"): 0,
        ("ns", "a", "RouterHealthy", "Unknown"): 1,
    }
    metrics.staticroute_conditions("ns", "a", conditions(Ready="True"))
    assert series(metrics) == {
        ("ns", "a", "Ready", "True"): 1,
        ("ns", "a", "Ready", "False"): 0,
        ("ns", "a", "Ready", "Unknown"): 0,
    }, "RouterHealthy left the status (routerRef removed): its series go with it"


def test_a_deleted_staticroute_loses_every_series_and_others_keep_theirs() -> None:
    metrics = Metrics(process=False)
    metrics.staticroute_conditions("ns", "a", conditions(Ready="True", ConfigMapReady="True"))
    metrics.staticroute_conditions("ns", "b", conditions(Ready="False"))
    metrics.forget_staticroute("ns", "a")
    assert {key[:2] for key in series(metrics)} == {("ns", "b")}
    metrics.forget_staticroute("ns", "a")  # twice is harmless
    metrics.forget_staticroute("other", "never-seen")
    assert len(series(metrics)) == 3


def families(text: str) -> dict[str, set[tuple[str, tuple[tuple[str, str], ...], float]]]:
    return {
        family.name: {
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for sample in family.samples
        }
        for family in text_string_to_metric_families(text)
        if not family.name.startswith(("process_", "python_"))
    }


def test_the_streamed_exposition_is_the_registry_text_in_small_pieces() -> None:
    """/metrics sends ``Metrics.exposition()``: the same series as ``generate_latest``,
    with the per-StaticRoute ones a few hundred at a time, so a scrape of 5,000
    StaticRoutes never holds their 4 MiB of text at once (a peak of 20 MiB before)."""
    metrics = Metrics(process=False)
    metrics.reconcile_total.labels("staticroute", "success").inc()
    count = 2000
    for i in range(count):
        metrics.staticroute_conditions(
            "ns", f"r-{i}", conditions(ConfigMapReady="True", Ready="True")
        )
    metrics.staticroute_conditions(
        "ns", 'odd"\\name', conditions(Ready="False", **{"A\nB": "True"})
    )

    body = metrics.exposition()
    pieces = list(body)

    text = b"".join(pieces).decode()
    assert len(body) == len(text.encode())
    assert families(text) == families(generate_latest(metrics.registry).decode())
    assert len(series(metrics)) == (count * 2 + 2) * 3
    largest = max(len(piece) for piece in pieces[1:])  # pieces[0]: the other metrics
    assert largest < 100_000, f"a piece of {largest} bytes: the series were not split"
    assert len(pieces) > count * 2 * 3 // 1000
