"""Status conditions with ``metav1.Condition`` semantics, as typed :class:`Condition` objects.

``lastTransitionTime`` moves only when a condition's status flips, as
``meta.SetStatusCondition`` does in Go; a change of reason or message alone keeps
it. Comparing a freshly computed status with the stored one then tells whether a
status write is needed at all: a steady cluster sees no writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pydantic

from router_controller.api import Condition, ConditionStatus, StaticRouteStatus

CONFIG_MAP_READY = "ConfigMapReady"
ROUTER_HEALTHY = "RouterHealthy"
ROUTER_CONFIG_SYNCED = "RouterConfigSynced"
READY = "Ready"
ORDER = (CONFIG_MAP_READY, ROUTER_HEALTHY, ROUTER_CONFIG_SYNCED, READY)


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> Condition:
    """A desired condition; its ``lastTransitionTime`` is set by :func:`merge`."""
    text: ConditionStatus = "Unknown" if status is None else ("True" if status else "False")
    return Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time="",
    )


def parse(raw: Any) -> list[Condition]:
    """The conditions of a stored status; entries that are not metav1.Conditions are dropped.

    The CRD's schema already requires the metav1.Condition fields, so only an object
    that bypassed it (an older CRD, a hand edit) loses anything here, and the next
    status write replaces such an entry with a well-formed one.
    """
    parsed = []
    for item in raw if isinstance(raw, list) else []:
        with contextlib.suppress(pydantic.ValidationError):
            parsed.append(Condition.model_validate(item))
    return parsed


def merge(previous: Sequence[Condition], desired: Sequence[Condition], now: str) -> list[Condition]:
    """The desired conditions, keeping each previous lastTransitionTime where status held."""
    return [
        cond.model_copy(update={"last_transition_time": stamp})
        for cond, stamp in _stamped(previous, desired, now)
    ]


def _stamped(
    previous: Sequence[Condition], desired: Sequence[Condition], now: str
) -> list[tuple[Condition, str]]:
    """Each desired condition with its lastTransitionTime (the previous one where its
    status held, else ``now``), in :data:`ORDER`."""
    before = {c.type: c for c in previous}
    stamped = []
    for cond in desired:
        old = before.get(cond.type)
        keep = old is not None and old.status == cond.status and old.last_transition_time
        stamped.append((cond, old.last_transition_time if keep and old else now))
    stamped.sort(key=lambda item: _rank(item[0].type))
    return stamped


def find(conditions: Sequence[Condition], type_: str) -> Condition | None:
    for cond in conditions:
        if cond.type == type_:
            return cond
    return None


def flipped(before: Sequence[Condition], after: Sequence[Condition], type_: str) -> bool:
    """Whether ``type_`` changed status or reason (what deserves an Event)."""
    old, new = find(before, type_), find(after, type_)
    if new is None:
        return False
    if old is None:
        return True
    return old.status != new.status or old.reason != new.reason


def wire(conditions: Sequence[Condition]) -> list[dict[str, Any]]:
    """The conditions as the API server stores them (camelCase, unset fields left out)."""
    return [c.model_dump(by_alias=True, exclude_none=True) for c in conditions]


# -- the wire form, written by hand ---------------------------------------------------
#
# Every reconcile compares the status it computed with the stored one, so it needs the
# wire form of every condition. ``model_copy`` to stamp each condition, then
# ``model_dump`` of a copied status, cost more than the rest of a reconcile that writes
# nothing; these build the same dictionaries from the typed objects directly. A test
# holds them to ``model_dump``'s output, so the models stay what defines the shape.


def merge_wire(
    previous: Sequence[Condition], desired: Sequence[Condition], now: str
) -> list[dict[str, Any]]:
    """``wire(merge(previous, desired, now))``, without the stamped copies."""
    return [_wire(cond, stamp) for cond, stamp in _stamped(previous, desired, now)]


def wire_status(
    status: StaticRouteStatus, generation: int | None, conditions: list[dict[str, Any]]
) -> dict[str, Any]:
    """``status`` with ``observedGeneration`` and ``conditions`` (already on the wire),
    as ``model_dump(by_alias=True, exclude_none=True)`` writes it."""
    out: dict[str, Any] = {}
    if status.config_map_ref is not None:
        out["configMapRef"] = status.config_map_ref
    if status.last_applied_time is not None:
        out["lastAppliedTime"] = status.last_applied_time
    if generation is not None:
        out["observedGeneration"] = generation
    out["conditions"] = conditions
    if status.routers is not None:
        out["routers"] = [r.model_dump(by_alias=True, exclude_none=True) for r in status.routers]
    return out


def _rank(type_: str) -> int:
    return ORDER.index(type_) if type_ in ORDER else len(ORDER)


def _wire(cond: Condition, stamp: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": cond.type,
        "status": cond.status,
        "reason": cond.reason,
        "message": cond.message,
    }
    if cond.observed_generation is not None:
        out["observedGeneration"] = cond.observed_generation
    out["lastTransitionTime"] = stamp
    return out
