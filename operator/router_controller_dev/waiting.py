"""Waiting for a condition with a deadline, never for a fixed time.

Tests and tools poll what they wait for (an object's status, a log line, a port
answering) and fail with the last value seen when the deadline passes, so a slow
machine makes them slower, not flaky.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from router_controller.kube import NotFound


async def wait_for(
    probe: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``probe`` (sync or async) until it returns a truthy value; fail after ``timeout``.

    An object not found yet (``NotFound``) or a key not there yet (``KeyError``) counts
    as "not yet" and is shown as the last value; any other exception ends the wait.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            value = probe()
            if asyncio.iscoroutine(value):
                value = await value
            last = value
            if value:
                return value
        except (NotFound, KeyError) as err:
            last = err
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)
