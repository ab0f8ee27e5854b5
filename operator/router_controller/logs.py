"""Log records on stderr, structlog's or the way controller-runtime's zap logger writes them.

A log pipeline built for the Go controller parses zap's JSON: ``level``, ``ts``,
``logger``, ``msg``, the key/value fields, then ``stacktrace``. With ``keys="zap"`` the
records have exactly those names (zap's level names, ``warn`` not ``warning``); with
``keys="structlog"`` they keep structlog's (``event``, ``timestamp``), which this
project's tooling reads. There is no ``caller`` field: controller-runtime builds its
logger without zap's AddCaller, so the Go controller writes none either.

Time encodings and stack traces follow controller-runtime's zap flags: a record at or
above the stack-trace level carries one (its exception's traceback, else the stack that
logged it), records below carry none, and the time is written as
``--zap-time-encoding`` says (UTC; a container's local time).

The standard library's loggers (asyncio, aiohttp) are rendered the same way.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from router_controller.settings import Logging

EventDict = MutableMapping[str, Any]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_THRESHOLDS = {"info": 20, "warning": 30, "error": 40, "panic": 50}
_ZAP_LEVELS = {"warning": "warn", "critical": "fatal", "exception": "error"}


class _NamedLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name given to ``structlog.get_logger(name)``."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(self._file, str(args[0]) if args else "")


def _logger_name(logger: Any, _method: str, event: EventDict) -> EventDict:
    name = getattr(logger, "name", "")
    if name and "logger" not in event:
        event["logger"] = name
    return event


class _Stacktraces:
    """Keep or drop stack traces by level, as zap's AddStacktrace does."""

    def __init__(self, threshold: str | None, *, stacks: bool = True) -> None:
        self._threshold = _THRESHOLDS[threshold] if threshold else 0
        # False for the standard library's records (their caller is logging itself), and
        # without a threshold, where only exceptions carry their own traceback.
        self._stacks = stacks and threshold is not None

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        level = _LEVELS.get(str(event.get("level", "info")), 20)
        if level >= self._threshold:
            if self._stacks and not event.get("exc_info"):
                event["stack_info"] = True
        else:
            event.pop("exc_info", None)
            event.pop("stack_info", None)
        return event


def _utc(nanos: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(nanos // 1_000_000_000))


def encode_time(nanos: int, encoding: str | None) -> Any:
    """A Unix time in nanoseconds as zap's time encoder ``encoding`` writes it."""
    fraction = nanos % 1_000_000_000
    if encoding == "rfc3339":
        return _utc(nanos) + "Z"
    if encoding == "rfc3339nano":
        digits = f"{fraction:09d}".rstrip("0")  # Go's .999999999: no trailing zeros
        return _utc(nanos) + (f".{digits}" if digits else "") + "Z"
    if encoding == "iso8601":
        return f"{_utc(nanos)}.{fraction // 1_000_000:03d}Z"
    if encoding == "epoch":
        return nanos / 1e9
    if encoding == "millis":
        return nanos / 1e6
    if encoding == "nanos":
        return nanos
    return (
        datetime.datetime.fromtimestamp(nanos / 1e9, tz=datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z")
    )


class _Timestamper:
    def __init__(self, key: str, encoding: str | None) -> None:
        self._key = key
        self._encoding = encoding

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        event[self._key] = encode_time(time.time_ns(), self._encoding)
        return event


def _zap_keys(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """Rename and order the fields as zap's JSON encoder writes them."""
    level = str(event.pop("level", "info"))
    record: dict[str, Any] = {"level": _ZAP_LEVELS.get(level, level), "ts": event.pop("ts", None)}
    if "logger" in event:
        record["logger"] = event.pop("logger")
    record["msg"] = event.pop("event", "")
    stacktrace = event.pop("exception", None) or event.pop("stack", None)
    record.update(event)
    if stacktrace:
        record["stacktrace"] = stacktrace
    return record


def configure_logging(settings: Logging, *, stream: TextIO | None = None) -> None:
    """Send structlog and the standard library's logging to ``stream`` (stderr)."""
    out = sys.stderr if stream is None else stream
    level = getattr(logging, settings.level.upper())
    zap = settings.format == "json" and settings.keys == "zap"
    encoding = settings.time_encoding or ("rfc3339" if zap else None)
    stamp = _Timestamper("ts" if zap else "timestamp", encoding)
    renderer: structlog.types.Processor
    if zap:  # zap's compact separators and raw UTF-8, for pipelines that match text
        renderer = structlog.processors.JSONRenderer(separators=(",", ":"), ensure_ascii=False)
    elif settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    finish: list[structlog.types.Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if zap:
        finish.append(_zap_keys)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _logger_name,
            _Stacktraces(settings.stacktrace_level),
            stamp,
            *finish,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                _Stacktraces(settings.stacktrace_level, stacks=False),
                stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *finish,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
