"""The operator under measurement, as a separate process started the way a user starts it.

Running it in its own process keeps its CPU time and memory apart from the load
generator's, and lets a restart be a real ``SIGKILL`` and a fresh interpreter. Its
metrics are served over plain HTTP on a loopback port and its probes on another;
its logs go to a file in the benchmark's work folder.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench import procstat, prom
from router_controller.envtest import free_port

CONTROLLER = "staticroute"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the benchmark ends, however it ends."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class OperatorProcess:
    """One ``python -m router_controller`` process and what can be read from outside it."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespaces: Sequence[str],
        workers: int,
        log_file: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.metrics_port = free_port()
        self.probe_port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "router_controller",
            f"--kubeconfig={kubeconfig}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            "--metrics-secure=false",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
            f"--namespaces={','.join(namespaces)}",
            f"--max-concurrent-reconciles={workers}",
            *extra_args,
        ]
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the operator is not running")
        return self.proc.pid

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        return procstat.memory_bytes(self.pid)

    async def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll ``/readyz`` until 200; seconds since the process was started."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.probe_port}/readyz"
        while True:
            self._check_alive()
            try:
                async with self._session.get(url) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started_at
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator not ready after {timeout:.0f}s; see {self.log_file}")
            await asyncio.sleep(0.02)

    async def metrics(self) -> str:
        self._check_alive()
        async with self._session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            resp.raise_for_status()
            return await resp.text()

    async def queue_state(self) -> tuple[float, float, float]:
        """(reconciles so far, queue depth, work in flight) of the StaticRoute controller.

        Work in flight is busy workers plus Events still to be sent (they follow the
        reconcile writes; an operator without that gauge reports none).
        """
        text = await self.metrics()
        return (
            prom.total(text, "controller_runtime_reconcile_total", controller=CONTROLLER),
            prom.total(text, "workqueue_depth", name=CONTROLLER),
            prom.total(text, "controller_runtime_active_workers", controller=CONTROLLER)
            + prom.total(text, "router_controller_events_pending"),
        )

    async def wait_idle(
        self, *, stable: float = 1.0, interval: float = 0.1, timeout: float = 600.0
    ) -> float:
        """Wait until the queue is empty, nothing in flight and no reconcile for ``stable`` s.

        Returns the monotonic time at which the operator went idle (the first poll of
        the final quiet stretch).
        """
        deadline = time.monotonic() + timeout
        last_total = -1.0
        quiet_since: float | None = None
        while True:
            polled = time.monotonic()
            reconciles, depth, busy = await self.queue_state()
            if depth == 0 and busy == 0:
                if quiet_since is None or reconciles != last_total:
                    quiet_since = polled
                elif polled - quiet_since >= stable:
                    return quiet_since
            else:
                quiet_since = None
            last_total = reconciles
            if polled > deadline:
                raise TimeoutError(f"operator still busy after {timeout:.0f}s")
            await asyncio.sleep(interval)

    def kill(self) -> None:
        """SIGKILL, as a crash or an evicted Pod would end it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM and wait; the process drains and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.kill()

    async def close(self) -> None:
        await self.stop()
        await self._session.close()

    def _check_alive(self) -> None:
        if self.proc is None:
            raise RuntimeError("the operator was not started")
        code = self.proc.poll()
        if code is not None:
            tail = self.log_file.read_text(errors="replace").splitlines()[-10:]
            raise RuntimeError(
                f"operator exited with {code}; last log lines:\n" + os.linesep.join(tail)
            )
