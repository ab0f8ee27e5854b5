"""``make bench``: how fast the operator converges, how little it writes, how much memory it needs.

Starts the project's real control plane (etcd, kube-apiserver,
kube-controller-manager), installs the CRD, and measures the operator run as a
separate process (``python -m router_controller``), as a user runs it:

1. convergence of N new StaticRoutes to ``ConfigMapReady`` (N = 1,000 and 5,000);
2. the floor: the same writes by a minimal client at the same concurrency, and the
   operator's time as a ratio to it;
3. update latency, spec write -> ConfigMap updated, with 1,000 converged;
4. steady state with healthy, synced routers: the API server's count of writes and
   the operator's CPU over 60 s;
5. a SIGKILL and restart with 5,000 converged: time to ready and to an empty queue,
   and the writes meanwhile;
6. peak RSS with 1,000, 5,000 and 10,000 StaticRoutes in the cache;
7. the time for a new StaticRoute to become ``ConfigMapReady`` while 1,000 routers
   hang, against the same with healthy routers, and the probes' own CPU and lateness
   with 10,000 healthy endpoints, alone and next to 1,000 hung ones
   (:mod:`bench.probing`, ``--only probe-scheduling``);
8. and 9. a big cluster around 1,000 StaticRoutes, and 200 namespaces in
   ``--namespaces`` (:mod:`bench.cluster_scale`, each on control planes of its own).

It prints a table and writes ``bench/results/latest.json`` (plus a time-stamped
copy). ``--quick`` runs everything at small sizes in a few minutes. The figures
depend on the machine and on what else runs on it: the load average before the run
and the core count are part of the output.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import cluster_scale, probing, report
from bench.harness import FULL, QUICK, Sizes
from bench.scenarios import SCENARIOS, Bench
from router_controller.kube import Kube
from router_controller.metrics import Metrics
from router_controller_dev import envtest, procstat, repo


def created_objects(s: Sizes) -> int:
    """StaticRoutes a run creates (each one also gets a ConfigMap and an Event)."""
    return (
        2 * s.small * s.repeats
        + 2 * s.large
        + max(0, s.largest - s.small - s.large)
        + (2 * (s.small + s.new_route_repeats))
    )


def estimate_seconds(s: Sizes, objects_per_second: float) -> float:
    """Creating objects, plus the fixed waits: steady-state window, spaced updates,
    the restart window, and hung probes (64 at a time, 5 s each) until the first
    endpoint fails a third time."""
    hung_probes = 2 * s.small / 64 * 5
    fixed = 60 + s.steady_seconds + s.update_samples * (s.update_gap + 0.05) + 25 + hung_probes
    return created_objects(s) / objects_per_second + fixed


class Progress:
    """Time-stamped progress lines on stderr, so stdout holds only the results."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


async def measure(
    plane: envtest.ControlPlane,
    sizes: Sizes,
    workdir: Path,
    results: dict[str, Any],
    only: frozenset[str] | None = None,
) -> None:
    """Run every scenario, filling ``results`` as figures come in."""
    kube = await Kube.connect(
        kubeconfig=str(plane.kubeconfig), metrics=Metrics(process=False), user_agent="bench"
    )
    progress = Progress()

    def first_rate(rate: float) -> None:
        progress(
            f"estimated total: about {estimate_seconds(sizes, rate) / 60:.0f} min "
            f"({created_objects(sizes)} StaticRoutes to create at ~{rate:.0f}/s)"
        )

    bench = Bench(
        plane=plane,
        kube=kube,
        sizes=sizes,
        workdir=workdir,
        progress=progress,
        results=results,
        on_first_rate=first_rate,
    )
    try:
        await bench.run_all(only)
        if only is None or set(probing.SCENARIOS) & only:
            await probing.measure(bench, probing.QUICK if sizes == QUICK else probing.FULL)
    finally:
        await kube.close()


def write(results: dict[str, Any]) -> Path:
    results_dir = repo.root() / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (results_dir / f"{stamp}-{results['mode']}.json").write_text(text)
    latest = results_dir / "latest.json"
    latest.write_text(text)
    return latest


def _scenarios(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(SCENARIOS) - set(probing.SCENARIOS) - set(cluster_scale.SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; "
            f"choose from {', '.join((*SCENARIOS, *probing.SCENARIOS, *cluster_scale.SCENARIOS))}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (100 / 300), a few minutes"
    )
    parser.add_argument(
        "--only",
        type=_scenarios,
        default=None,
        metavar="NAME,...",
        help="run only these scenarios (of: "
        f"{', '.join((*SCENARIOS, *probing.SCENARIOS, *cluster_scale.SCENARIOS))})",
    )
    parser.add_argument(
        "--operator-source",
        type=Path,
        default=None,
        metavar="DIR",
        help="measure the router_controller package found in DIR (the operator/ folder of "
        "another checkout, e.g. an older version for a before/after comparison) instead "
        "of this one; the benchmark itself stays this checkout's",
    )
    args = parser.parse_args(argv)
    if args.operator_source is not None:
        source = args.operator_source.resolve()
        if not (source / "router_controller" / "__main__.py").is_file():
            parser.error(f"{source} holds no router_controller package")
        # Inherited by the operator processes (and the floor client) this run starts.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(source), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    sizes = QUICK if args.quick else FULL
    load_before = procstat.load_average()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cores": procstat.cores(),
            "load_average_before": [round(x, 2) for x in load_before],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "sizes": dataclasses.asdict(sizes),
        "only": sorted(args.only) if args.only else None,
        "operator_source": str(args.operator_source) if args.operator_source else None,
    }
    cores = results["machine"]["cores"]
    print(
        f"router-controller benchmark ({results['mode']}): {cores['online']} cores "
        f"({cores['usable']} usable), load average before "
        + "/".join(f"{x:.2f}" for x in load_before),
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    started = time.monotonic()
    ok = False
    try:
        binaries = envtest.find_binaries()
        results["machine"]["control_plane"] = envtest.versions(binaries)
        main_only = args.only - set(cluster_scale.SCENARIOS) if args.only else None
        if main_only is None or main_only:
            with envtest.running(crds=True) as plane:
                asyncio.run(measure(plane, sizes, workdir, results, main_only))
        scale_only = args.only & set(cluster_scale.SCENARIOS) if args.only else None
        if scale_only is None or scale_only:
            cluster_scale.run(
                sizes, workdir, results, Progress(), quick=args.quick, only=scale_only
            )
        ok = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as err:  # report what was measured so far, then fail
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
    finally:
        results["seconds"] = round(time.monotonic() - started, 1)
        results["complete"] = ok
        results["targets"] = (
            report.targets(results) + probing.targets(results) + cluster_scale.targets(results)
        )
        path = write(results)
        print()
        print(report.render(results))
        print(probing.render(results))
        print(cluster_scale.render(results))
        print(f"\n{'all' if ok else 'INCOMPLETE:'} figures in {path} ({results['seconds']:.0f} s)")
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"operator logs kept in {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
