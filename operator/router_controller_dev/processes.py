"""The operator as a separate process, as a user runs it, and what can be seen from outside.

Tests, ``make bench`` and the local control plane all start child processes that must
never outlive their parent, however it ends: :func:`die_with_parent` asks the kernel
for that. :class:`OperatorProcess` is ``python -m router_controller`` with its log in
a file: the log says which ports the operator bound (it is started on port 0, so
nobody races for a free port), which identity it campaigns under and what the API
server refused; its ``/readyz`` and ``/metrics`` are polled over HTTP, and its CPU
time and memory are read from ``/proc``. :class:`Children` starts helper programs
(Prometheus, ...) with their output in files and stops them all at the end.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from router_controller_dev import procstat, prom
from router_controller_dev.waiting import wait_for

_PR_SET_PDEATHSIG = 1
CONTROLLER = "staticroute"


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """In a child before exec: get SIGKILL when the parent exits (Linux)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def operator_command(kubeconfig: Path, *args: str) -> list[str]:
    """The operator as a user runs it, listening on free ports (later ``args`` win)."""
    return [
        sys.executable, "-m", "router_controller", f"--kubeconfig={kubeconfig}",
        "--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:0", *args,
    ]  # fmt: skip


class OperatorProcess:
    """One ``python -m router_controller`` process, its log file, and its endpoints.

    Call :meth:`close` (or :meth:`kill`) when done; :meth:`start` again after a kill
    runs a fresh process that appends to the same log (what is read of the log starts
    over with it).
    """

    def __init__(self, command: Sequence[str], log_path: Path) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() of the last start
        self._lines: list[tuple[float, str]] = []  # (when read, line) since the last start
        self._seen: list[dict[str, Any]] = []
        self._read = 0
        self._serving: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- running -----------------------------------------------------------------------

    def start(self) -> OperatorProcess:
        env = {**os.environ, "PYTHONWARNINGS": "always::ResourceWarning"}
        env.pop("WATCH_NAMESPACES", None)
        self._lines, self._seen, self._serving = [], [], None
        self._read = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the operator is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self, *, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code (-N for signal N)."""
        await wait_for(lambda: not self.running, timeout=timeout, what="the operator to exit")
        assert self.proc is not None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or an evicted Pod would end it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait for the process to drain and exit; SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    async def close(self) -> None:
        """Stop the process (gracefully) and the HTTP client used to poll it."""
        await self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- its log -----------------------------------------------------------------------

    @property
    def output(self) -> str:
        """Everything the log file holds (every start's output)."""
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[tuple[float, str]]:
        """The log lines of this start so far, each with the monotonic time it was read."""
        with self.log_path.open("rb") as log:
            log.seek(self._read)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        now = time.monotonic()
        for line in complete.decode(errors="replace").splitlines():
            self._lines.append((now, line))
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._seen.append(record)
        return list(self._lines)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (other lines are skipped)."""
        self.lines()
        return list(self._seen)

    def find(self, event: str) -> dict[str, Any] | None:
        for record in self.records():
            if record.get("event") == event:
                return record
        return None

    async def logged(self, event: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the first log record with this event; fail early if the process died."""

        def probe() -> dict[str, Any] | None:
            found = self.find(event)
            if found is None and not self.running:
                raise AssertionError(f"operator exited before logging {event!r}:\n{self.output}")
            return found

        record: dict[str, Any] = await wait_for(probe, timeout=timeout, what=f"log {event!r}")
        return record

    def refused(self, resource: str, verb: str) -> list[tuple[float, str]]:
        """Log lines saying the API server refused ``verb`` on ``resource``, with when read."""
        needle = f'cannot {verb} resource "{resource}"'
        found = []
        for at, line in self.lines():
            try:
                text = " ".join(str(v) for v in json.loads(line).values())
            except (ValueError, AttributeError):
                text = line
            if needle in text:
                found.append((at, text))
        return found

    def forbidden(self) -> list[str]:
        """Every line of the log that mentions a refusal ("forbidden")."""
        return [line for line in self.output.splitlines() if "forbidden" in line.lower()]

    # -- its endpoints -----------------------------------------------------------------

    async def serving(self) -> dict[str, Any]:
        """The ``serving`` log record of this start: the ports bound, whether TLS is on."""
        if self._serving is None:
            self._serving = await self.logged("serving")
        return self._serving

    async def identity(self) -> str:
        return str((await self.logged("starting"))["identity"])

    async def probe_url(self, path: str) -> str:
        return f"http://127.0.0.1:{(await self.serving())['probe_port']}{path}"

    async def metrics_url(self) -> str:
        record = await self.serving()
        scheme = "https" if record["metrics_secure"] else "http"
        return f"{scheme}://127.0.0.1:{record['metrics_port']}/metrics"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._session

    async def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll ``/readyz`` until 200; seconds since the process was started."""
        deadline = time.monotonic() + timeout
        url = await self.probe_url("/readyz")
        while True:
            self._check_alive()
            try:
                async with self._http().get(url) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started_at
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator not ready after {timeout:.0f}s; see {self.log_path}")
            await asyncio.sleep(0.02)

    async def metrics(self) -> str:
        """``/metrics`` as text (plain HTTP: start it with ``--metrics-secure=false``)."""
        self._check_alive()
        async with self._http().get(await self.metrics_url()) as resp:
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

    # -- what the kernel says ----------------------------------------------------------

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        """``VmHWM`` and ``VmRSS`` in bytes."""
        return procstat.memory_bytes(self.pid)

    def _check_alive(self) -> None:
        if self.proc is None:
            raise RuntimeError("the operator was not started")
        code = self.proc.poll()
        if code is not None:
            tail = self.output.splitlines()[-10:]
            raise RuntimeError(
                f"operator exited with {code}; last log lines:\n" + os.linesep.join(tail)
            )


class Children:
    """Helper programs run for a while, each with its output in ``<folder>/<name>.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self._started.append(proc)
        return proc

    def output(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to all, then wait (SIGKILL after 30 s)."""
        for proc in self._started:
            proc.terminate()
        for proc in self._started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._started.clear()
