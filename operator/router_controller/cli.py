"""Command line -> Settings; logging; run the manager; exit codes.

Every flag the Go controller's ``cmd/main.go`` binds is accepted with its meaning, so a
Deployment written for it runs this one unchanged: kubebuilder's (``--metrics-bind-address``,
``--health-probe-bind-address``, ``--leader-elect``, ``--metrics-secure``,
``--enable-http2``, ``--metrics-cert-*``, ``--webhook-cert-*``), controller-runtime's
``--kubeconfig`` and its zap flags (``--zap-devel``, ``--zap-encoder``, ``--zap-log-level``
with numeric levels, ``--zap-stacktrace-level``, ``--zap-time-encoding``), in Go's syntax
too (``-flag=value``, one dash). Flags with nothing to act on here (no webhooks, no HTTP/2)
are logged as unused at start-up, never refused.

Log field names: structlog's by default, zap's when a zap flag chose the format
(``--zap-encoder=json``, ``--zap-devel=false``). The Go scaffold's own default is
development mode, console lines, so a pipeline that parses the Go controller's JSON was
set up with one of those flags, and it gets zap's names here; the default stays what
this project's manifests, tests and docs read (``event``, ``timestamp``).

``check`` and ``render`` (the first argument) run the offline commands of
:mod:`router_controller.check` instead. Exit codes: 0 after a graceful stop, 1 when the
lease was lost or the operator failed, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from router_controller import __version__
from router_controller.logs import configure_logging
from router_controller.settings import (
    TIME_ENCODINGS,
    LeaderElection,
    Logging,
    Serving,
    Settings,
    parse_bind,
)


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


DEFAULTS = Settings()


def _go_duration(seconds: float) -> str:
    """A default duration as Go prints the common ones: ``15s``, ``2.5s``."""
    return f"{seconds:g}s"


def _shown(value: Any, kind: Any) -> str:
    """A default as it would be written on the command line."""
    if kind is duration:
        return _go_duration(float(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _setting(path: str) -> tuple[Any, str]:
    """The default of a :class:`Settings` field (``"serving.metrics_secure"``) and its help."""
    *groups, name = path.split(".")
    model: BaseModel = DEFAULTS
    for group in groups:
        model = getattr(model, group)
    return getattr(model, name), type(model).model_fields[name].description or ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-controller",
        description="Turns StaticRoute resources into the vLLM router's dynamic_config.json "
        "ConfigMaps and checks that every router replica loaded them.",
        epilog="Without a cluster: `router-controller check -f FILE|DIR|-` checks StaticRoute "
        "manifests, `router-controller render -f FILE` prints the dynamic_config.json the "
        "operator would write (see their --help).",
    )
    add = p.add_argument

    def setting(flag: str, path: str, **options: Any) -> None:
        """A flag for a Settings field: its default and help come from the field."""
        default, text = _setting(path)
        shown = _shown(default, options.get("type"))
        options.setdefault("default", default)
        add(flag, help=text.format(default=shown), **options)

    boolean: dict[str, Any] = {"type": _bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    seconds: dict[str, Any] = {"type": duration, "metavar": "DURATION"}
    add("--version", action="version", version=f"router-controller {__version__}")
    setting("--kubeconfig", "kubeconfig")
    setting("--namespaces", "namespaces", default=os.environ.get("WATCH_NAMESPACES", ""))
    setting("--max-concurrent-reconciles", "max_concurrent_reconciles", type=int)
    setting("--metrics-bind-address", "serving.metrics_bind_address", type=bind_address)
    setting("--metrics-secure", "serving.metrics_secure", **boolean)
    setting("--metrics-cert-path", "serving.metrics_cert_path")
    setting("--metrics-cert-name", "serving.metrics_cert_name")
    setting("--metrics-cert-key", "serving.metrics_cert_key")
    setting("--health-probe-bind-address", "serving.health_probe_bind_address", type=bind_address)
    setting("--enable-http2", "serving.enable_http2", **boolean)
    setting("--leader-elect", "leader_election.enabled", **boolean)
    setting("--leader-election-id", "leader_election.lease_name")
    setting("--leader-election-namespace", "leader_election.lease_namespace")
    setting("--leader-elect-lease-duration", "leader_election.lease_duration", **seconds)
    setting("--leader-elect-renew-deadline", "leader_election.renew_deadline", **seconds)
    setting("--leader-elect-retry-period", "leader_election.retry_period", **seconds)
    setting("--allow-cross-namespace-router-ref", "allow_cross_namespace_router_ref", **boolean)
    setting("--probe-concurrency", "probe_concurrency", type=int)
    setting("--shutdown-timeout", "shutdown_timeout", **seconds)
    for name, default in (("path", ""), ("name", "tls.crt"), ("key", "tls.key")):
        add(
            f"--webhook-cert-{name}",
            default=None,
            metavar="PATH" if name == "path" else "FILE",
            help=f"accepted for the Go controller's manifests (default {default!r}); this "
            "operator serves no webhooks, so it has no effect (logged as unused)",
        )
    # controller-runtime's zap flags (pkg/log/zap BindFlags), with the same values.
    add(
        "--zap-devel",
        type=_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="development defaults: console encoder, debug level, stack traces from warn; "
        "=false: production defaults (zap's JSON, info, stack traces from error). Default: "
        "production, but JSON with structlog's field names (event, timestamp)",
    )
    add(
        "--zap-encoder",
        dest="encoder",
        type=_encoder("zap"),
        default=None,
        metavar="{json,console}",
        help="json: zap's JSON, with its field names (level, ts, logger, msg, stacktrace), "
        "as the Go controller writes it; console: for people",
    )
    add(
        "--log-format",
        dest="encoder",
        type=_encoder("structlog"),
        metavar="{json,console}",
        help="json (the default): structlog's field names (event, level, timestamp, logger)",
    )
    add(
        "--zap-log-level",
        "--log-level",
        dest="log_level",
        type=_level,
        default=None,
        metavar="LEVEL",
        help="debug, info, error, or an integer > 0 (zap's V-levels; all are debug here); "
        f"warning is accepted too. Default {DEFAULTS.logging.level} (debug with --zap-devel)",
    )
    add(
        "--zap-stacktrace-level",
        type=_choice("stacktrace level", ("info", "error", "panic")),
        default=None,
        metavar="LEVEL",
        help="info, error or panic: records at or above it carry a stack trace "
        "(default error; warn with --zap-devel)",
    )
    add(
        "--zap-time-encoding",
        type=_choice("time encoding", TIME_ENCODINGS),
        default=None,
        metavar="ENCODING",
        help=f"{', '.join(TIME_ENCODINGS)} (default rfc3339 with zap's field names, "
        "else ISO 8601 with microseconds)",
    )
    return p


def _choice(what: str, values: tuple[str, ...]) -> Callable[[str], str]:
    """A value out of ``values``, case-insensitive as controller-runtime's flags are."""

    def parse(value: str) -> str:
        if value.lower() not in values:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {value!r}: use one of {', '.join(values)}"
            )
        return value.lower()

    return parse


def _encoder(keys: str) -> Callable[[str], tuple[str, str]]:
    names = _choice("encoder", ("json", "console"))
    return lambda value: (keys, names(value))


def _level(value: str) -> str:
    """zap-log-level: debug, info, error, or N > 0 (logr's V(N), finer than debug)."""
    lowered = value.lower()
    if lowered in ("debug", "info", "error"):
        return lowered
    if lowered in ("warn", "warning"):
        return "warning"
    if value.isdigit() and int(value) > 0:
        return "debug"
    raise argparse.ArgumentTypeError(
        f"invalid log level {value!r}: use debug, info, error or an integer > 0"
    )


def _go_style(argv: list[str], p: argparse.ArgumentParser) -> list[str]:
    """Go's flag syntax: ``-flag``, ``-flag=value`` and ``-flag value`` mean ``--flag...``."""
    known = p._option_string_actions  # the parser's own table of option strings
    out: list[str] = []
    takes_value = False
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if takes_value:  # this is the previous flag's value, whatever it looks like
            out.append(arg)
            takes_value = False
            continue
        name, eq, _ = arg.partition("=")
        single_dash = len(name) > 2 and name.startswith("-") and not name.startswith("--")
        if single_dash and f"-{name}" in known:
            arg, name = f"-{arg}", f"-{name}"
        action = known.get(name)
        takes_value = bool(action and not eq and action.nargs is None and action.type != _bool)
        out.append(arg)
    return out


def parse(argv: list[str] | None) -> tuple[Settings, list[tuple[str, str]]]:
    """Settings from the command line, and the flags given that have no effect here."""
    p = parser()
    args = p.parse_args(_go_style(sys.argv[1:] if argv is None else argv, p))
    unused = [
        (f"--webhook-cert-{name}", "this operator serves no webhooks")
        for name in ("path", "name", "key")
        if getattr(args, f"webhook_cert_{name}") is not None
    ]
    if args.enable_http2:
        unused.append(("--enable-http2", "the metrics endpoint serves HTTP/1.1 only"))
    return _settings(args), unused


def settings_from(argv: list[str] | None) -> Settings:
    return parse(argv)[0]


def _logging(args: argparse.Namespace) -> Logging:
    """controller-runtime's rule: --zap-devel picks defaults, explicit flags win over them."""
    devel: bool | None = args.zap_devel
    if args.encoder is not None:
        keys, format_ = args.encoder
    elif devel is None:
        keys, format_ = DEFAULTS.logging.keys, DEFAULTS.logging.format
    else:
        keys, format_ = "zap", "console" if devel else "json"
    return Logging(
        level=args.log_level or ("debug" if devel else DEFAULTS.logging.level),
        format=format_,
        keys=keys,
        # Unless a zap flag chose the format, only exceptions carry a trace (their own).
        stacktrace_level=args.zap_stacktrace_level
        or ("warning" if devel else "error" if keys == "zap" else None),
        time_encoding=args.zap_time_encoding,
    )


def _settings(args: argparse.Namespace) -> Settings:
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
        logging=_logging(args),
    )


class NoClusterConfig(Exception):
    """Neither in-cluster config nor a kubeconfig could be loaded."""


async def _run(settings: Settings) -> int:
    from router_controller.kube import Kube
    from router_controller.kubeconfig import ConfigError
    from router_controller.manager import Manager
    from router_controller.metrics import Metrics
    from router_controller.wiring import identity

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
        settings, unused = parse(args)
    except ValidationError as err:
        print(f"router-controller: invalid flags: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    log = structlog.get_logger("main")
    log.debug("settings", **settings.model_dump(mode="json"))
    for flag, reason in unused:
        log.info("flag has no effect", flag=flag, reason=reason)
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
