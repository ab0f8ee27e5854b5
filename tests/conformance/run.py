"""Run the conformance table against a real production-stack router (``make router-conformance``).

The operator's promise is that every file it writes is one the router applies and
serves, on start-up and on reload, and that what it refuses would really go wrong.
This checks that promise against the router itself, not against the fake the tests
use: for each case of ``tests/conformance/cases.py`` it starts vllm_router from the
given source with ``--dynamic-config-json`` on loopback, next to small stand-in
backends, and checks:

- accepted specs, at start-up and on a reload from another file: ``/health`` reports
  exactly the file the operator writes, and a request for each model (and alias)
  reaches the backend that serves it;
- refused specs, with the file written without the operator's rules: the router
  crashes, refuses the reload, half applies it, fails the requests or loops, as the
  table says.

It prints one line per file tried with the router's verdict and exits non-zero on any
surprise. ``hack/router-conformance.sh`` builds the router's virtualenv once (cached
per requirements file); run it with ``make router-conformance ROUTER_SRC=<checkout>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from router_controller_dev.envtest import free_port
from router_controller_dev.fakerouter import (
    LOAD_ERROR,
    NO_NAMESPACE,
    ROUTER_DEFAULTS,
    ROUTER_FIELDS,
)
from tests.conformance import cases

START_TIMEOUT = 40.0  # a cold import of the router takes a few seconds on a busy machine
RELOAD_TIMEOUT = 35.0  # the router re-reads its file every 10 s
CRASH_GRACE = 20.0  # how long a router that never serves HTTP is given to do so
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # the router's log colours
_RAISED = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")


def shown(content: dict[str, Any]) -> dict[str, Any]:
    """What /health must report for ``content``: every field, unset ones null/default."""
    return {key: content.get(key, ROUTER_DEFAULTS.get(key)) for key in ROUTER_FIELDS}


class Backends:
    """Stand-in model servers: backend *i* serves ``cases.MODELS[i]``, on loopback."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for index, model in enumerate(cases.MODELS):
            self._runners.append(await self._serve(index, model))

    async def _serve(self, index: int, model: str) -> web.AppRunner:
        async def models(_: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

        async def complete(request: web.Request) -> web.Response:
            body = await request.json()
            return web.json_response({"served_by": index, "model": body.get("model")})

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text="")

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_get("/metrics", metrics)
        for path in ("/v1/chat/completions", "/v1/completions"):
            app.router.add_post(path, complete)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.urls.append(f"http://localhost:{port}")
        return runner

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


class Router:
    """One vllm_router process on ``--dynamic-config-json`` and nothing else."""

    def __init__(self, run: Run, name: str) -> None:
        self.run = run
        self.name = name
        self.port = free_port()
        self.file = run.workdir / f"{name}.json"
        self.log = run.workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    def write(self, content: dict[str, Any]) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(content, indent=2), encoding="utf-8")
        tmp.replace(self.file)  # whole at once, as the kubelet swaps a ConfigMap volume

    async def start(self, content: dict[str, Any], *flags: str) -> bool:
        """Start on ``content`` (and ``flags``); True once /health answers, False if never."""
        self.write(content)
        env = {
            **os.environ,
            "PYTHONPATH": str(self.run.src),
            "KUBECONFIG": str(self.run.kubeconfig),
        }
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.run.python, "-m", "vllm_router.app", "--host", "127.0.0.1",
                "--port", str(self.port), "--dynamic-config-json", str(self.file), *flags,
                stdout=log, stderr=log, env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        crashed_at: float | None = None
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                return False
            try:
                await self.health()
                return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            if crashed_at is None and "Traceback" in self.logtext():
                crashed_at = time.monotonic()  # the main thread died; the watcher lives on
            if crashed_at is not None and time.monotonic() - crashed_at > CRASH_GRACE / 4:
                return False
            await asyncio.sleep(0.2)
        return False

    def logtext(self) -> str:
        return _COLOUR.sub("", self.log.read_text(encoding="utf-8", errors="replace"))

    def exception(self) -> str:
        """The last exception line of the log (``ValueError: ...``), else its last line."""
        lines = [line for line in self.logtext().splitlines() if line.strip()]
        raised = [line for line in lines if _RAISED.match(line)]
        return (raised or lines or ["no output"])[-1][:160]

    async def health(self) -> dict[str, Any]:
        async with self.run.http.get(f"http://127.0.0.1:{self.port}/health") as answer:
            answer.raise_for_status()
            body: dict[str, Any] = await answer.json()
            return body

    async def running(self) -> dict[str, Any] | None:
        try:
            config = (await self.health()).get("dynamic_config")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return config if isinstance(config, dict) else None

    async def request(self, model: str) -> tuple[int, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        async with self.run.http.post(url, json=body) as answer:
            text = await answer.text()
            try:
                return answer.status, json.loads(text)
            except ValueError:
                return answer.status, text

    async def until(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while not await check():
            if time.monotonic() > deadline:
                raise Failure(f"{self.name}: no {what} within {RELOAD_TIMEOUT:.0f} s")
            await asyncio.sleep(0.5)

    async def serves(self, content: dict[str, Any]) -> None:
        async def exact() -> bool:
            return await self.running() == shown(content)

        await self.until("/health showing the file", exact)

    async def logged(self, text: str, after: int = 0) -> None:
        async def found() -> bool:
            return text in self.logtext()[after:]

        await self.until(repr(text) + " in the log", found)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class Failure(Exception):
    """The router did not do what the table says."""


class Run:
    def __init__(
        self, *, python: str, src: Path, workdir: Path, http: aiohttp.ClientSession
    ) -> None:
        self.python = python
        self.src = src
        self.workdir = workdir
        self.http = http
        self.backends = Backends()
        self.lines: list[tuple[bool, str]] = []
        self.slots = asyncio.Semaphore(6)  # router processes at once
        # k8s discovery needs some cluster config to start; this one points at a closed
        # port, so its watch fails with a connection error (or, without a namespace,
        # before connecting, which is what the no-namespace case looks for).
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
            "users": [{"name": "u", "user": {"token": "none"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))  # fmt: skip

    def report(
        self, ok: bool, phase: str, case: str, content: dict[str, Any], verdict: str
    ) -> None:
        mark = "PASS" if ok else "FAIL"
        file = json.dumps(content, sort_keys=True, separators=(",", ":"))
        self.lines.append((ok, f"{mark} {phase:<8} {case:<38} {verdict}\n       file: {file}"))
        print(self.lines[-1][1], flush=True)

    async def router(self, name: str) -> Router:
        return Router(self, name)

    async def check_routing(
        self, router: Router, content: dict[str, Any], case: cases.Accepted
    ) -> str:
        if case.k8s:
            mark = len(router.logtext())
            await router.logged("K8s watcher error", mark)
            if NO_NAMESPACE in router.logtext()[mark:]:
                raise Failure("the k8s discovery runs without a namespace")
            return "k8s discovery watching namespace " + str(content.get("k8s_namespace"))
        served = []
        aliases = dict(p.split(":") for p in str(content.get("static_aliases", "")).split(",") if p)
        models = [m for m in cases.MODELS if m in str(content["static_models"]).split(",")]
        for name in [*models, *case.requests]:
            status, body = await router.request(name)
            want = cases.MODELS.index(aliases.get(name, name))
            if status != 200 or not isinstance(body, dict) or body.get("served_by") != want:
                raise Failure(f"a request for {name} got {status} {str(body)[:200]}")
            served.append(f"{name} -> backend {want}")
        return "; ".join(served)

    async def accepted_start(self, case: cases.Accepted) -> None:
        content = cases.operator_file(case, self.backends.urls)
        async with self.slots:
            router = Router(self, f"start-{case.id}")
            try:
                if not await router.start(content):
                    raise Failure("the router did not start:\n" + router.logtext()[-1500:])
                await router.serves(content)
                verdict = "served: /health is the file; " + await self.check_routing(
                    router, content, case
                )
                self.report(True, "start-up", case.id, content, verdict)
            except Failure as err:
                self.report(False, "start-up", case.id, content, str(err))
            finally:
                await router.stop()

    async def helm_chart_flags(self) -> None:
        """The chart's router: its own discovery and routing flags, then the file."""
        (case,) = [c for c in cases.ACCEPTED if c.id == "aliases-labels-spaces"]
        content = cases.operator_file(case, self.backends.urls)
        flags = (
            "--service-discovery", "k8s", "--k8s-namespace", cases.NAMESPACE,
            "--k8s-service-discovery-type", "pod-ip", "--routing-logic", "roundrobin",
        )  # fmt: skip
        async with self.slots:
            router = Router(self, "start-helm-chart-flags")
            try:
                if not await router.start(content, *flags):
                    raise Failure("the router did not start:\n" + router.logtext()[-1500:])
                await router.serves(content)
                routed = await self.check_routing(router, content, case)
                shown_flags = " ".join(flags)
                verdict = f"served with the chart's flags ({shown_flags}): the file won; {routed}"
                self.report(True, "start-up", "helm-chart-flags", content, verdict)
            except Failure as err:
                self.report(False, "start-up", "helm-chart-flags", content, str(err))
            finally:
                await router.stop()

    async def accepted_chain(self, name: str, chain: list[cases.Accepted]) -> None:
        """One router reloading from file to file: each must be applied and served."""
        (base,) = [c for c in cases.ACCEPTED if c.id == cases.BASE]
        async with self.slots:
            router = Router(self, name)
            try:
                first = cases.operator_file(base, self.backends.urls)
                if not await router.start(first):
                    raise Failure("the router did not start")
                await router.serves(first)
                for case in chain:
                    content = cases.operator_file(case, self.backends.urls)
                    try:
                        router.write(content)
                        await router.serves(content)
                        routed = await self.check_routing(router, content, case)
                        self.report(
                            True,
                            "reload",
                            case.id,
                            content,
                            "applied: /health is the file; " + routed,
                        )
                    except Failure as err:
                        self.report(False, "reload", case.id, content, str(err))
                        return
            except Failure as err:
                self.report(False, "reload", name, {}, str(err))
            finally:
                await router.stop()

    async def refused_start(self, case: cases.Refused) -> None:
        content = cases.unchecked_file(case, self.backends.urls)
        operator = cases.refused_by_operator(case, self.backends.urls)
        async with self.slots:
            router = Router(self, f"refused-start-{case.id}")
            try:
                started = await router.start(content)
                if case.start == "crash":
                    if started:
                        raise Failure("expected a crash, but the router serves")
                    verdict = "crash: " + router.exception()
                else:
                    if not started:
                        raise Failure("the router did not start")
                    await router.serves(content)
                    verdict = await self._fails(router, case)
                self.report(
                    True,
                    "start-up",
                    case.id,
                    content,
                    f"{verdict}\n       operator: {operator[:160]}",
                )
            except Failure as err:
                self.report(False, "start-up", case.id, content, str(err))
            finally:
                await router.stop()

    async def _fails(self, router: Router, case: cases.Refused) -> str:
        name = case.request or cases.MODELS[0]
        status, body = await router.request(name)
        if status != case.status:
            raise Failure(f"expected {case.status} for {name}, got {status} {str(body)[:160]}")
        return (
            f"fails: /health shows the file, a request for {name} gets {status} {str(body)[:120]}"
        )

    async def refused_reload(self, case: cases.Refused) -> None:
        (base_case,) = [c for c in cases.ACCEPTED if c.id == cases.BASE]
        base = cases.operator_file(base_case, self.backends.urls)
        content = cases.unchecked_file(case, self.backends.urls)
        operator = cases.refused_by_operator(case, self.backends.urls)
        async with self.slots:
            router = Router(self, f"refused-reload-{case.id}")
            try:
                if not await router.start(base) or not await router.running():
                    raise Failure("the router did not start on the base file")
                await router.serves(base)
                mark = len(router.logtext())
                router.write(content)
                if case.reload in ("refused", "half-applied"):
                    await router.logged(LOAD_ERROR, mark)
                    line = next(x for x in router.logtext()[mark:].splitlines() if LOAD_ERROR in x)
                    if await router.running() != shown(base):
                        raise Failure("/health left the previous file")
                    status, _ = await router.request(cases.MODELS[0])
                    if (status == 200) != (case.reload == "half-applied"):
                        raise Failure(f"a request for the new file's model got {status}")
                    what = "the new backends serve" if status == 200 else "the old backends serve"
                    reason = line.split(LOAD_ERROR, 1)[1][:120]
                    verdict = (
                        f"{case.reload}: /health keeps the previous file, {what}; log: {reason}"
                    )
                elif case.reload == "fails":
                    await router.serves(content)
                    verdict = await self._fails(router, case)
                else:
                    await router.serves(content)
                    await router.logged(NO_NAMESPACE, mark)
                    verdict = (
                        "no-namespace: /health shows the file and is healthy, the pod watch fails: "
                        + NO_NAMESPACE
                    )
                self.report(
                    True,
                    "reload",
                    case.id,
                    content,
                    f"{verdict}\n       operator: {operator[:160]}",
                )
            except Failure as err:
                self.report(False, "reload", case.id, content, str(err))
            finally:
                await router.stop()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--router-python", required=True, help="python of the router's venv")
    parser.add_argument("--router-src", required=True, type=Path, help="folder holding vllm_router")
    args = parser.parse_args(argv)
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=15)
    with tempfile.TemporaryDirectory(prefix="router-conformance-") as tmp:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            run = Run(python=args.router_python, src=args.router_src, workdir=Path(tmp), http=http)
            await run.backends.start()
            others = [c for c in cases.ACCEPTED if c.id != cases.BASE]
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(run.accepted_chain("reload-chain-1", others[0::2]))
                    group.create_task(run.accepted_chain("reload-chain-2", others[1::2]))
                    for case in cases.REFUSED:
                        if case.reload is not None:
                            group.create_task(run.refused_reload(case))
                    for accepted in cases.ACCEPTED:
                        group.create_task(run.accepted_start(accepted))
                    group.create_task(run.helm_chart_flags())
                    for case in cases.REFUSED:
                        if case.start is not None:
                            group.create_task(run.refused_start(case))
            finally:
                await run.backends.close()
    failed = [line for ok, line in run.lines if not ok]
    print(
        f"\n{len(run.lines)} files tried against {args.router_src} in "
        f"{time.monotonic() - started:.0f} s: {len(run.lines) - len(failed)} as expected, "
        f"{len(failed)} not"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
