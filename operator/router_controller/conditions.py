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

from router_controller.api import Condition, ConditionStatus

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
    before = {c.type: c for c in previous}
    merged = []
    for cond in desired:
        old = before.get(cond.type)
        keep = old is not None and old.status == cond.status and old.last_transition_time
        stamp = old.last_transition_time if keep and old else now
        merged.append(cond.model_copy(update={"last_transition_time": stamp}))
    merged.sort(key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER))
    return merged


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
