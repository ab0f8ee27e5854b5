"""Command line -> Settings; logging; run the manager; exit codes.

Flag names are kubebuilder's (``--metrics-bind-address``, ``--health-probe-bind-address``,
``--leader-elect``, ``--metrics-secure``, ``--enable-http2``, ``--metrics-cert-path``,
``--zap-log-level``, ``--zap-encoder``), so a Deployment written for the Go
controller runs this one unchanged. Exit codes: 0 after a graceful stop, 1 when
the lease was lost or the operator failed, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import re
import signal
import sys

import structlog
from pydantic import ValidationError

from router_controller import __version__
from router_controller.settings import LeaderElection, Logging, Serving, Settings, parse_bind


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "t", "true", "yes", "y"):
        return True
    if lowered in ("0", "f", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(value: str) -> float:
    """Seconds from a Go duration (``15s``, ``500ms``, ``1m30s``) or a plain number of seconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise argparse.ArgumentTypeError(
                f"expected a duration like 15s, 500ms or 1m30s, got {value!r}"
            ) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 15s, got {value!r}")
    return seconds


def bind_address(value: str) -> str:
    """A listen address as kubebuilder takes it: ``:8443``, ``127.0.0.1:8081``, or ``0`` (off)."""
    try:
        parse_bind(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-controller",
        description="Turns StaticRoute resources into the vLLM router's dynamic_config.json "
        "ConfigMaps and checks that every router replica loaded them.",
    )
    add = p.add_argument
    add("--version", action="version", version=f"router-controller {__version__}")
    add(
        "--kubeconfig",
        default=None,
        help="path to a kubeconfig; default: in-cluster config, then $KUBECONFIG, ~/.kube/config",
    )
    add(
        "--namespaces",
        default=os.environ.get("WATCH_NAMESPACES", ""),
        help="comma-separated namespaces to watch (env WATCH_NAMESPACES); default: all",
    )
    add("--max-concurrent-reconciles", type=int, default=4, help="reconcile workers (default 4)")
    add(
        "--metrics-bind-address",
        type=bind_address,
        default="0",
        help="address of the metrics endpoint, e.g. :8443 (HTTPS) or :8080 (HTTP); 0 disables",
    )
    add(
        "--metrics-secure",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="serve metrics over HTTPS with TokenReview/SubjectAccessReview auth (default true)",
    )
    add(
        "--metrics-cert-path",
        default=None,
        help="folder holding the metrics serving certificate; default: self-signed",
    )
    add("--metrics-cert-name", default="tls.crt", help="certificate file name (default tls.crt)")
    add("--metrics-cert-key", default="tls.key", help="key file name (default tls.key)")
    add(
        "--health-probe-bind-address",
        type=bind_address,
        default=":8081",
        help="address of /healthz and /readyz (default :8081); 0 disables",
    )
    add(
        "--enable-http2",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="accepted for compatibility; HTTP/2 is never served (default false)",
    )
    add(
        "--leader-elect",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="elect a leader with a Lease so only one replica writes",
    )
    add(
        "--leader-election-id",
        default="27bc728d.vllm.ai",
        help="Lease name (default 27bc728d.vllm.ai, the Go controller's)",
    )
    add(
        "--leader-election-namespace",
        default=None,
        help="Lease namespace; default: the Pod's namespace, else default",
    )
    add(
        "--leader-elect-lease-duration",
        type=duration,
        default=15.0,
        metavar="DURATION",
        help="how long a lease is valid without renewal (default 15s)",
    )
    add(
        "--leader-elect-renew-deadline",
        type=duration,
        default=10.0,
        metavar="DURATION",
        help="how long the leader keeps trying to renew before giving up (default 10s)",
    )
    add(
        "--leader-elect-retry-period",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="time between election attempts (default 2s)",
    )
    add(
        "--allow-cross-namespace-router-ref",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="let spec.routerRef name a Service in another namespace",
    )
    add(
        "--probe-concurrency",
        type=int,
        default=64,
        help="router /health probes in flight at once (default 64)",
    )
    add(
        "--shutdown-timeout",
        type=duration,
        default=15.0,
        metavar="DURATION",
        help="how long in-flight reconciles may take after SIGTERM (default 15s)",
    )
    add(
        "--zap-log-level",
        "--log-level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    add(
        "--zap-encoder",
        "--log-format",
        dest="log_format",
        default="json",
        choices=["json", "console"],
        help="log format (default json)",
    )
    add(
        "--zap-devel",
        action="store_const",
        const="console",
        dest="log_format",
        help="console logs (same as --zap-encoder=console)",
    )
    return p


def settings_from(argv: list[str] | None) -> Settings:
    args = parser().parse_args(argv)
    namespaces = tuple(n.strip() for n in args.namespaces.split(",") if n.strip())
    return Settings(
        kubeconfig=args.kubeconfig,
        namespaces=namespaces,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
        allow_cross_namespace_router_ref=args.allow_cross_namespace_router_ref,
        probe_concurrency=args.probe_concurrency,
        shutdown_timeout=args.shutdown_timeout,
        leader_election=LeaderElection(
            enabled=args.leader_elect,
            lease_name=args.leader_election_id,
            lease_namespace=args.leader_election_namespace,
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        ),
        serving=Serving(
            metrics_bind_address=args.metrics_bind_address,
            metrics_secure=args.metrics_secure,
            metrics_cert_path=args.metrics_cert_path,
            metrics_cert_name=args.metrics_cert_name,
            metrics_cert_key=args.metrics_cert_key,
            health_probe_bind_address=args.health_probe_bind_address,
            enable_http2=args.enable_http2,
        ),
        logging=Logging(level=args.log_level, format=args.log_format),
    )


def configure_logging(settings: Logging) -> None:
    """structlog to stderr; the standard library's loggers (asyncio, aiohttp) rendered alike."""
    level = getattr(logging, settings.level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class NoClusterConfig(Exception):
    """Neither in-cluster config nor a kubeconfig could be loaded."""


async def _run(settings: Settings) -> int:
    from router_controller.kube import Kube
    from router_controller.kubeconfig import ConfigError
    from router_controller.manager import Manager, identity
    from router_controller.metrics import Metrics

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    name = identity()
    # The API server names the field manager after the part before the first "/"
    # ("router-controller", the same for every replica); audit logs get the rest.
    user_agent = (
        f"router-controller/{__version__} ({platform.system().lower()}/{platform.machine()}) {name}"
    )
    try:
        kube = await Kube.connect(
            kubeconfig=settings.kubeconfig, metrics=metrics, user_agent=user_agent
        )
    except ConfigError as err:
        raise NoClusterConfig(
            f"cannot load a cluster configuration ({err}); run inside a Pod, pass "
            "--kubeconfig=PATH, or set KUBECONFIG (`make run` starts a local cluster)"
        ) from None
    try:
        manager = Manager(settings=settings, kube=kube, metrics=metrics, identity=name)
        return await manager.run(stop)
    finally:
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("check", "render"):
        from router_controller import check  # the CEL runtime loads only for these commands

        return check.check_main(args[1:]) if args[0] == "check" else check.render_main(args[1:])
    try:
        settings = settings_from(argv)
    except ValidationError as err:
        print(f"router-controller: invalid flags: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    log = structlog.get_logger("main")
    try:
        code = asyncio.run(_run(settings))
    except NoClusterConfig as err:
        log.error("no cluster", error=str(err))
        return 1
    except Exception as err:  # the last word on any failure: say it, exit non-zero
        log.exception("operator failed", error=f"{type(err).__name__}: {err}")
        return 1
    log.info("stopped", exit_code=code)
    return code
