"""Status conditions with ``metav1.Condition`` semantics, as plain dicts.

``lastTransitionTime`` moves only when a condition's status flips, as
``meta.SetStatusCondition`` does in Go; a change of reason or message alone keeps
it. Comparing a freshly computed status with the stored one then tells whether a
status write is needed at all: a steady cluster sees no writes.
"""

from __future__ import annotations

from typing import Any

CONFIG_MAP_READY = "ConfigMapReady"
ROUTER_HEALTHY = "RouterHealthy"
ROUTER_CONFIG_SYNCED = "RouterConfigSynced"
READY = "Ready"
ORDER = (CONFIG_MAP_READY, ROUTER_HEALTHY, ROUTER_CONFIG_SYNCED, READY)


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    """A condition without lastTransitionTime (filled in by :func:`merge`)."""
    text = "Unknown" if status is None else ("True" if status else "False")
    out: dict[str, Any] = {"type": type_, "status": text, "reason": reason, "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge(
    previous: list[dict[str, Any]] | None, desired: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """The desired conditions, keeping each previous lastTransitionTime where status held."""
    before = {c.get("type"): c for c in previous or []}
    merged = []
    for cond in desired:
        old = before.get(cond["type"])
        keep = old is not None and old.get("status") == cond["status"]
        stamp = old.get("lastTransitionTime") if keep and old else None
        merged.append({**cond, "lastTransitionTime": stamp or now})
    merged.sort(key=lambda c: ORDER.index(c["type"]) if c["type"] in ORDER else len(ORDER))
    return merged


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def flipped(before: list[dict[str, Any]] | None, after: list[dict[str, Any]], type_: str) -> bool:
    """Whether ``type_`` changed status or reason (what deserves an Event)."""
    old, new = find(before, type_), find(after, type_)
    if new is None:
        return False
    if old is None:
        return True
    return bool(old.get("status") != new.get("status") or old.get("reason") != new.get("reason"))
