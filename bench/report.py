"""The figures as a table for people and as JSON for tools, each compared with its target.

The targets are the ones the project aims for; they are figures to read, not
assertions: a missed target is printed as ``MISSED`` and the run still succeeds.
"""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str]  # measurement, figure, target, verdict


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def _writes(writes: dict[str, int]) -> str:
    if not writes:
        return "0 writes"
    return (
        f"{sum(writes.values())} writes (" + ", ".join(f"{k}: {v}" for k, v in writes.items()) + ")"
    )


def _writes_per(writes: dict[str, float]) -> str:
    return f"{sum(writes.values()):.2f} (" + ", ".join(f"{k}: {v}" for k, v in writes.items()) + ")"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it was met."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float, ok: bool) -> None:
        out.append({"name": name, "target": target, "value": value, "met": ok})

    for n, conv in (results.get("convergence") or {}).items():
        ratio = conv["ratio"]
        add(f"convergence N={n} / floor", "<= 1.1", ratio, ratio <= 1.1)
        writes = conv["operator"].get("writes_per_object_converging")
        if writes is not None:
            add(f"writes per StaticRoute until N={n} converged", "<= 2.0", writes, writes <= 2.0)
    if "update_latency" in results:
        p99 = results["update_latency"]["p99_ms"]
        add("update latency p99 (ms)", "< 100", p99, p99 < 100)
    if "steady_state" in results:
        writes = results["steady_state"]["writes_total"]
        add("steady-state writes", "0", writes, writes == 0)
    if "restart" in results:
        writes = results["restart"]["writes_total"]
        add("writes on restart", "0", writes, writes == 0)
    if "restart_with_routers" in results:
        writes = results["restart_with_routers"]["writes_total"]
        add("writes on restart with routers", "0", writes, writes == 0)
    memory = results.get("memory") or {}
    if memory:
        largest = max(memory, key=int)
        peak = memory[largest]["peak_rss_mib"]
        add(f"peak RSS at {largest} (MiB)", "< 150", peak, peak < 150)
        if "5000" in memory:
            peak = memory["5000"]["peak_rss_mib"]
            add("peak RSS at 5000 (MiB)", "<= 100", peak, peak <= 100)
    if "probing_under_failure" in results:
        change = results["probing_under_failure"]["change_percent"]
        add("new StaticRoute, hanging vs healthy (%)", "<= +10", change, change <= 10)
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    met = {t["name"]: t["met"] for t in results.get("targets") or []}
    table: list[Row] = []
    for n, conv in (results.get("convergence") or {}).items():
        op, floor = conv["operator"], conv["floor"]
        table.append(
            (
                f"1 convergence N={n}",
                f"{op['seconds']:.2f} s, {op['objects_per_second']:.0f} obj/s, "
                f"{op['cpu_seconds_per_object'] * 1000:.2f} ms CPU/obj"
                + (
                    f", {op['reconciles_per_object']:.2f} reconciles/obj"
                    if "reconciles_per_object" in op
                    else ""
                ),
                "",
                "",
            )
        )
        if "writes_per_object_converging" in op:
            table.append(
                (
                    f"1 writes per StaticRoute N={n}",
                    f"{op['writes_per_object_converging']:.2f} until converged "
                    f"(floor {floor['writes_per_object_converging']:.2f}); "
                    f"all: {_writes_per(op['writes_per_object'])}",
                    "<= 2.0 until converged",
                    _verdict(met.get(f"writes per StaticRoute until N={n} converged")),
                )
            )
        table.append(
            (
                f"2 floor N={n}",
                f"{floor['seconds']:.2f} s, {floor['objects_per_second']:.0f} obj/s "
                f"-> ratio {conv['ratio']:.2f}",
                "ratio <= 1.1",
                _verdict(met.get(f"convergence N={n} / floor")),
            )
        )
    if "update_latency" in results:
        u = results["update_latency"]
        table.append(
            (
                f"3 update latency N={u['n']} ({u['samples']} samples)",
                f"p50 {u['p50_ms']:.1f} / p95 {u['p95_ms']:.1f} / p99 {u['p99_ms']:.1f} ms",
                "p99 < 100 ms",
                _verdict(met.get("update latency p99 (ms)")),
            )
        )
    if "steady_state" in results:
        s = results["steady_state"]
        table.append(
            (
                f"4 steady state N={s['n']}, {s['seconds']:.0f} s",
                f"{_writes(s['writes'])}, CPU {s['cpu_seconds']:.2f} s "
                f"({s['cpu_percent_of_a_core']:.1f}% of a core), "
                f"{s['probes_per_second']:.0f} probes/s",
                "0 writes",
                _verdict(met.get("steady-state writes")),
            )
        )
    if "restart" in results:
        r = results["restart"]
        table.append(
            (
                f"5 restart N={r['n']}",
                f"ready {r['ready_seconds']:.2f} s, drained {r['drained_seconds']:.2f} s, "
                f"{_writes(r['writes'])}",
                "0 writes",
                _verdict(met.get("writes on restart")),
            )
        )
    if "restart_with_routers" in results:
        r = results["restart_with_routers"]
        table.append(
            (
                f"5 restart N={r['n']}, healthy routers",
                f"ready {r['ready_seconds']:.2f} s, {_writes(r['writes'])} "
                f"in {r['window_seconds']:.0f} s",
                "0 writes",
                _verdict(met.get("writes on restart with routers")),
            )
        )
    memory = results.get("memory") or {}
    for n in sorted(memory, key=int):
        m = memory[n]
        largest = n == max(memory, key=int)
        target = "< 150 MiB" if largest else ("<= 100 MiB" if n == "5000" else "")
        table.append(
            (
                f"6 memory N={n}",
                f"peak RSS {m['peak_rss_mib']:.1f} MiB (now {m['rss_mib']:.1f} MiB), "
                f"{_writes(m['writes_at_start'])} at start",
                target,
                _verdict(met.get(f"peak RSS at {n} (MiB)")) if target else "",
            )
        )
    if "probing_under_failure" in results:
        p = results["probing_under_failure"]
        table.append(
            (
                f"7 new StaticRoute, N={p['n']} routers hang",
                f"{p['probe_slots_hung_median_ms']:.0f} ms (probe slots hung), "
                f"{p['turning_unhealthy_median_ms']:.0f} ms (turning unhealthy) vs "
                f"{p['healthy_median_ms']:.0f} ms healthy: {p['change_percent']:+.1f}%",
                "<= +10%",
                _verdict(met.get("new StaticRoute, hanging vs healthy (%)")),
            )
        )
    return table


def render(results: dict[str, Any]) -> str:
    table = [("measurement", "figure", "target", ""), *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = []
    for i, row in enumerate(table):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
            + ("  " + row[3] if row[3] else "")
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 4))
    return "\n".join(lines)
