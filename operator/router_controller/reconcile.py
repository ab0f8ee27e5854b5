"""The reconcile contract between a controller's workers and its reconciler.

As controller-runtime's ``pkg/reconcile``: a reconciler is handed the key of an
object (never the event that caused it) and answers what the worker does next with
the key. The table of outcomes is in :mod:`router_controller.controller`, which
runs the workers; this module holds only the types both sides agree on, so a
reconciler never imports the worker machinery, nor the workers a reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router_controller.kube import ObjectKey

Key = ObjectKey
"""``(namespace, name)`` of the object to reconcile (controller-runtime's Request)."""


@dataclass(frozen=True, slots=True)
class Result:
    """What the controller does next with the key.

    ``Result()``: done until the next change. ``requeue_after``: look again after that
    many seconds (e.g. a state the cache cannot see changing). ``requeue``: retry soon
    with the key's backoff (e.g. after a 409 from a stale cache).
    """

    requeue_after: float | None = None
    requeue: bool = False


class TerminalError(Exception):
    """An error that retrying cannot fix: the key waits for the next change.

    Raise it only for what no later attempt can change without a new event: input
    the reconciler can never act on. Everything else is retried with backoff.
    """


class Reconciler(Protocol):
    """Brings the world in line with the object at ``key``; safe to repeat any time."""

    async def reconcile(self, key: Key) -> Result: ...
