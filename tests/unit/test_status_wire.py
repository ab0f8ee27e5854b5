"""The status a reconcile writes, built by hand, is what the pydantic models dump.

The reconciler compares and writes ``conditions.wire_status(...)`` of
``conditions.merge_wire(...)`` instead of copying and dumping the models on every
reconcile; these tests hold the hand-built dictionaries to the models' own output,
key order included, so that the models stay what defines the status.
"""

from __future__ import annotations

import pytest

from router_controller import conditions as cond
from router_controller.api import Condition, RouterStatus, StaticRouteStatus

NOW = "2026-12-02T03:00:00Z"
EARLIER = "2026-12-01T03:00:00Z"

PREVIOUS = [
    Condition(
        type=cond.READY,
        status="True",
        reason="Ready",
        message="m",
        observed_generation=1,
        last_transition_time=EARLIER,
    ),
    Condition(
        type=cond.CONFIG_MAP_READY,
        status="False",
        reason="InvalidSpec",
        message="m",
        last_transition_time=EARLIER,
    ),
    Condition(type="Custom", status="True", reason="R", message="", last_transition_time=""),
]
DESIRED = [
    cond.condition(cond.READY, True, "Ready", "still ready", 2),
    cond.condition("Custom", True, "R", "stamped now: no time before", None),
    cond.condition(cond.ROUTER_HEALTHY, None, "Probing", "not probed yet", 2),
    cond.condition(cond.CONFIG_MAP_READY, True, "ConfigMapApplied", "flipped", 2),
]


@pytest.mark.parametrize("previous", [[], PREVIOUS])
def test_merged_conditions_on_the_wire_are_what_the_models_dump(
    previous: list[Condition],
) -> None:
    expected = cond.wire(cond.merge(previous, DESIRED, NOW))
    assert cond.merge_wire(previous, DESIRED, NOW) == expected
    assert [list(c) for c in cond.merge_wire(previous, DESIRED, NOW)] == [list(c) for c in expected]


ROUTERS = [
    RouterStatus(address="10.0.0.1:8000", healthy=True, config_synced=True),
    RouterStatus(
        address="10.0.0.2:8000",
        healthy=False,
        config_synced=False,
        last_probe_time=NOW,
        message="connection refused",
    ),
]


@pytest.mark.parametrize(
    ("status", "generation"),
    [
        (StaticRouteStatus(), None),
        (StaticRouteStatus(config_map_ref="r-config", last_applied_time=NOW), 3),
        (StaticRouteStatus(config_map_ref="r-config", routers=ROUTERS), 1),
        (StaticRouteStatus(last_applied_time=NOW, routers=[]), None),
    ],
)
def test_the_status_on_the_wire_is_what_the_model_dumps(
    status: StaticRouteStatus, generation: int | None
) -> None:
    merged = cond.merge(PREVIOUS, DESIRED, NOW)
    complete = status.model_copy(update={"observed_generation": generation, "conditions": merged})
    expected = complete.model_dump(by_alias=True, exclude_none=True)
    built = cond.wire_status(status, generation, cond.merge_wire(PREVIOUS, DESIRED, NOW))
    assert built == expected
    assert list(built) == list(expected)
