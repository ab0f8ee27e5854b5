"""StaticRoute spec -> the router's ``dynamic_config.json``, with the router's own rules.

The router builds its configuration with ``DynamicRouterConfig(**json)``: an unknown
key, a backend URL its regular expression drops, or a count mismatch between
backends and models makes it refuse the whole file (and, at start-up, crash), and an
invalid routing logic is half applied. None of that is visible to the user who
wrote the StaticRoute. So every rule the router applies is checked here, before a
byte is written, and reported as one message that says what to change.

Rendering is deterministic (sorted keys, fixed separators, trimmed items) so an
unchanged spec always yields the same bytes and the reconciler can skip the write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from router_controller.api import MODEL_TYPES, StaticRouteSpec

# The router's own URL check (vllm_router.utils.validate_url), applied to each item
# of static_backends after splitting on "," with no trimming.
ROUTER_URL_RE = re.compile(
    r"^(http|https)://"
    r"(([a-zA-Z0-9_-]+\.)+[a-zA-Z]{2,}|localhost|\d{1,3}(\.\d{1,3}){3})"
    r"(:\d+)?"
    r"(/.*)?$"
)

# Every key DynamicRouterConfig accepts. Anything else makes the router reject the file.
ROUTER_KEYS = frozenset(
    {
        "service_discovery",
        "routing_logic",
        "static_backends",
        "static_models",
        "static_aliases",
        "static_model_labels",
        "static_model_types",
        "static_backend_health_checks",
        "static_backend_health_check_interval",
        "static_backend_health_check_timeout_seconds",
        "prefill_model_labels",
        "decode_model_labels",
        "k8s_port",
        "k8s_namespace",
        "k8s_label_selector",
        "session_key",
        "callbacks",
    }
)

# What the router reports in /health for keys the file did not set.
ROUTER_DEFAULTS: dict[str, Any] = {
    "static_backend_health_checks": False,
    "static_backend_health_check_interval": 60,
    "static_backend_health_check_timeout_seconds": 10,
}

# Spec fields copied through unchanged (after trimming strings) when set.
_PASSTHROUGH = (
    "static_model_labels",
    "static_backend_health_checks",
    "static_backend_health_check_interval",
    "static_backend_health_check_timeout_seconds",
    "prefill_model_labels",
    "decode_model_labels",
    "k8s_port",
    "k8s_namespace",
    "k8s_label_selector",
    "session_key",
)


class InvalidSpecError(ValueError):
    """The spec describes a configuration the router would reject; the message says why."""


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    """The file's parsed content and its exact bytes."""

    content: dict[str, Any]
    data: str


def _items(value: str, field: str, problems: list[str]) -> list[str]:
    """Split on "," and trim each item (the router does not trim); empty items are errors."""
    items = [item.strip() for item in value.split(",")]
    empty = [str(i + 1) for i, item in enumerate(items) if not item]
    if empty:
        problems.append(
            f"spec.{field}: item {', '.join(empty)} of {len(items)} is empty; "
            'remove the extra comma (e.g. "a,,b" -> "a,b")'
        )
        return [item for item in items if item]
    return items


def _check_backends(backends: list[str], problems: list[str]) -> None:
    for url in backends:
        if ROUTER_URL_RE.match(url):
            continue
        hint = "use http:// or https:// and a dotted host name, localhost or an IPv4 address"
        if url.lower().startswith(("http://", "https://")) and not url.startswith(
            ("http://", "https://")
        ):
            hint = "write the scheme in lower case"
        elif "[" in url:
            hint = "the router does not accept IPv6 literals; use a DNS name or an IPv4 address"
        elif re.match(r"^https?://[^./:]+(:\d+)?(/.*)?$", url):
            hint = (
                "the router drops host names without a dot; "
                "write the Service's full name, e.g. my-svc.NAMESPACE.svc.cluster.local"
            )
        problems.append(f"spec.staticBackends: {url!r} is not a URL the router accepts: {hint}")


def render(spec: StaticRouteSpec) -> RenderedConfig:
    """Build the router's config from ``spec``, or raise :class:`InvalidSpecError`."""
    problems: list[str] = []
    content: dict[str, Any] = {
        "service_discovery": spec.service_discovery,
        "routing_logic": spec.routing_logic,
    }

    backends: list[str] = []
    models: list[str] = []
    if spec.static_backends is not None:
        backends = _items(spec.static_backends, "staticBackends", problems)
        _check_backends(backends, problems)
        content["static_backends"] = ",".join(backends)
    if spec.static_models is not None:
        models = _items(spec.static_models, "staticModels", problems)
        content["static_models"] = ",".join(models)

    if spec.service_discovery == "static":
        if not spec.static_backends:
            problems.append("spec.staticBackends is required when serviceDiscovery is static")
        if not spec.static_models:
            problems.append("spec.staticModels is required when serviceDiscovery is static")
    elif spec.k8s_port is None:
        problems.append("spec.k8sPort is required when serviceDiscovery is k8s")
    if backends and models and len(backends) != len(models):
        problems.append(
            f"spec.staticBackends has {len(backends)} URLs but spec.staticModels has "
            f"{len(models)} models; give exactly one model per backend"
        )

    if spec.routing_logic == "session" and not (spec.session_key and spec.session_key.strip()):
        problems.append("spec.sessionKey is required when routingLogic is session")

    if spec.static_aliases is not None:
        pairs = _items(spec.static_aliases, "staticAliases", problems)
        cleaned = []
        for pair in pairs:
            parts = [part.strip() for part in pair.split(":")]
            if len(parts) != 2 or not all(parts):
                problems.append(
                    f"spec.staticAliases: {pair!r} is not alias:model; "
                    'write "alias:model,alias:model"'
                )
            else:
                cleaned.append(":".join(parts))
        content["static_aliases"] = ",".join(cleaned)

    if spec.static_model_types is not None:
        types = _items(spec.static_model_types, "staticModelTypes", problems)
        unknown = [t for t in types if t not in MODEL_TYPES]
        if unknown:
            problems.append(
                f"spec.staticModelTypes: unknown model type {', '.join(map(repr, unknown))}; "
                f"each must be one of {', '.join(MODEL_TYPES)}"
            )
        if models and types and len(types) != len(models):
            problems.append(
                f"spec.staticModelTypes has {len(types)} types but spec.staticModels has "
                f"{len(models)} models; give one type per model"
            )
        content["static_model_types"] = ",".join(types)
    if spec.static_backend_health_checks and not spec.static_model_types:
        problems.append(
            "spec.staticModelTypes is required when staticBackendHealthChecks is true "
            f"(one of {', '.join(MODEL_TYPES)} per model)"
        )

    for field in _PASSTHROUGH:
        value = getattr(spec, field)
        if value is None:
            continue
        content[field] = value.strip() if isinstance(value, str) else value

    if problems:
        raise InvalidSpecError("; ".join(problems))
    unknown_keys = set(content) - ROUTER_KEYS
    if unknown_keys:  # a programming error, never the user's: fail loudly
        raise AssertionError(f"router config would carry unknown keys {sorted(unknown_keys)}")
    return RenderedConfig(content=content, data=serialize(content))


def serialize(content: dict[str, Any]) -> str:
    """The canonical bytes: sorted keys, two-space indent, trailing newline."""
    return json.dumps(content, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def config_mismatches(expected: dict[str, Any], running: Any) -> list[str]:
    """Keys whose value in the router's ``/health`` ``dynamic_config`` differs from ours.

    Every key the file sets must match; keys it does not set may be null or the
    router's default. An empty list means the router runs this configuration.
    """
    if not isinstance(running, dict):
        return sorted(expected)
    different = [key for key, value in expected.items() if running.get(key) != value]
    for key, value in running.items():
        if key in expected or value is None:
            continue
        if key in ROUTER_DEFAULTS and ROUTER_DEFAULTS[key] == value:
            continue
        different.append(key)
    return sorted(different)
