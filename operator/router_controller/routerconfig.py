"""StaticRoute spec -> the router's ``dynamic_config.json``, with the router's own rules.

The router builds its configuration with ``DynamicRouterConfig(**json)``: an unknown
key, a backend URL its regular expression drops, or a count mismatch between
backends and models makes it refuse the whole file (and, at start-up, crash), and an
invalid routing logic is half applied. None of that is visible to the user who
wrote the StaticRoute. So every rule the router applies is checked here, before a
byte is written, and reported as one message that says what to change.

Start-up and reload are two different code paths in the router, and a file must work
on both. At start-up (``parsers/parser.py``) the file's keys become argparse defaults,
so command-line flags and their defaults fill what the file leaves out
(``k8s_namespace`` = ``default``, ``k8s_port`` = 8000), ``validate_args`` checks
them and ``app.initialize_all`` builds everything with every flag. The config watcher
thread (``dynamic_config.py``) is started inside ``initialize_all`` and loads the
file at once, then every 10 s: ``DynamicRouterConfig.from_json`` (the file alone)
compared with the running config, and on a difference ``reconfigure_all``: service
discovery first, then ``reconfigure_routing_logic(routing_logic,
session_key=session_key)`` and nothing else. The start-up config lacks
``static_model_labels`` and the prefill/decode labels (``from_args`` does not copy
them) and carries the command-line defaults, so that first load nearly always
reconfigures: the reload path is in force from the first second. A load that raises
is logged (``DynamicConfigWatcher: Error loading config file: ...``) and leaves
``/health`` on the previous config; when it raises after the service discovery was
swapped, the router runs the new backends under the old config.

What the router does with each key and routing logic, from its source and confirmed by
running it on files (``make router-conformance``), one row per entry: start-up, then
reload (every change, and once right after start), then what the operator does.

the file as a whole
    start-up: its keys become flag defaults; flags given on the command line win
              until the first load replaces them, right after; a ``--routing-logic``
              other than the file's can win the race with that load and stay in use
              (``app.state.router`` is set from both threads).
    reload:   bad JSON, an unknown key, a missing ``service_discovery`` or
              ``routing_logic``: refused, the old config kept.
    operator: writes only the router's keys, always both required ones.
``service_discovery``
    start-up: ``static`` or ``k8s``.  reload: same; a switch between them works.
    operator: CRD enum; always written.
``routing_logic``, an invalid value
    start-up: ``initialize_routing_logic`` raises: crash.
    reload:   the discovery is swapped, then it raises: half applied, ``/health``
              shows the old config.
    operator: CRD enum; never written.
``roundrobin``, ``prefixaware``
    start-up: work.  reload: work (``--prefix-min-match-length`` is reset to 0).
    operator: written.
``session``
    start-up: ``validate_args`` exits without ``session_key``.
    reload:   ``SessionRouter(None)`` raises after the discovery swap: half applied.
    operator: requires a non-blank ``sessionKey``.
``kvaware``
    start-up: needs lmcache; without it ``NameError: controller_manager`` kills the
              main thread and the process stays up with no HTTP server.
    reload:   rebuilt with ``session_key`` only (no LMCache controller port, no
              threshold): raises after the discovery swap, half applied.
    operator: refused; a kvaware router runs from its command-line flags, without
              ``--dynamic-config-json``.
``disaggregated_prefill``
    start-up: works only with the labels of the file it started with: the prefill
              and decode clients are made once, by the lifespan hook.
    reload:   ``DisaggregatedPrefillRouter(None, None)`` and the clients are never
              rebuilt: switching to it gives 500 (``'State' object has no attribute
              'prefill_client'``), changed backends keep getting the old ones.
    operator: refused; such a router runs from command-line flags (labels included).
``disaggregated_prefill_orchestrated``
    start-up: the watcher's first load races the main thread; when it wins, the
              routing logic is rebuilt with empty labels (every request 503).
    reload:   rebuilt with empty labels: every request 503
              ``PREFILL_SERVICE_UNAVAILABLE``.
    operator: refused, as disaggregated_prefill.
``static_backends``
    start-up: split on "," untrimmed; an item failing ``validate_url`` is dropped with
              a warning; a count other than the models': crash.
    reload:   same; a count mismatch is refused, the old config kept.
    operator: trimmed; each item matches the router's URL rule; no empty item; one
              per model.
``static_models``
    start-up and reload: split on "," untrimmed (" m2" is another model, "" is
              accepted).
    operator: trimmed; no empty item; one per backend.
``static_aliases``
    start-up: ``alias:model`` pairs, another shape raises (crash); an alias of a model
              not in ``static_models`` answers 404.
    reload:   same; the k8s discovery has no aliases: an alias gets 404.
    operator: trimmed ``alias:model``; the model must be in ``staticModels``; refused
              with k8s discovery.
``static_model_labels``
    start-up and reload: label *i* belongs to model *i*; with fewer labels than
              models every request fails (``IndexError``, 500), then ``/health`` 503.
    operator: one label per model.
``static_model_types``
    start-up and reload: used only by the backend health checks.
    operator: known types, one per model.
``static_backend_health_checks``
    start-up: ``validate_args`` exits without types.
    reload:   without types the check loop fails on every turn and never excludes a
              backend; the k8s discovery ignores the key.
    operator: requires ``staticModelTypes``; refused with k8s discovery.
``static_backend_health_check_interval``,
``static_backend_health_check_timeout_seconds``
    start-up and reload: used as given.
    operator: at least 1 (an interval of 0 makes the check loop spin).
``prefill_model_labels``, ``decode_model_labels``
    start-up and reload: used only by the disaggregated routing logics.
    operator: written as given (no effect with the routing logics a file can carry).
``k8s_port``
    start-up: flag default 8000.  reload: ``None`` makes backend URLs
              ``http://IP:None``.
    operator: required with k8s discovery.
``k8s_namespace``
    start-up: flag default ``default``.
    reload:   ``None``: the pod watch fails ("Missing the required parameter
              `namespace`") every 0.5 s while ``/health`` stays healthy, no backends.
    operator: the StaticRoute's own namespace when unset.
``k8s_label_selector``
    start-up: flag default "".  reload: ``None``; both select every pod.
    operator: written as given.
the k8s discovery type (no key)
    start-up: ``--k8s-service-discovery-type``.
    reload:   always pod-ip; ``--k8s-watcher-timeout-seconds`` and
              ``--backend-health-check-timeout-seconds`` back to their defaults.
    operator: nothing a file can carry (documented in the README).
``session_key``
    start-up and reload: used by ``session``.  operator: trimmed, written.
``callbacks``
    start-up and reload: imports a module; a wrong one leaves the process up without
              an HTTP server.
    operator: not exposed in the API.

Rendering is deterministic (sorted keys, fixed separators, trimmed items) so an
unchanged spec always yields the same bytes and the reconciler can skip the write.

Which spec field becomes which key, and how, is one table (:data:`SPEC_FIELDS`): a row
per ``StaticRouteSpec`` field, copied through, rendered by a named function, or
deliberately not written (with the reason). Adding a router key is a row there, the
field in :mod:`router_controller.api` and the CRD; a unit test fails for a spec field
without a row, and for a row whose key the router does not accept.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from router_controller.api import (
    MODEL_TYPES,
    StaticRouteSpec,
    config_map_name,
    default_config_map_name,
)

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

# Routing logics a dynamic config file cannot carry, and what to do instead (see the
# table above). The CRD refuses them with the same advice.
UNSUPPORTED_ROUTING_LOGIC: dict[str, str] = {
    "kvaware": (
        "spec.routingLogic kvaware cannot be applied from a dynamic config file: the router "
        "rebuilds its routing logic on every reload without the LMCache controller settings "
        "kvaware needs, and half applies the file; run a kvaware router with "
        "--routing-logic kvaware and its --lmcache-* flags, without --dynamic-config-json, "
        "and leave it out of StaticRoutes"
    ),
    "disaggregated_prefill": (
        "spec.routingLogic disaggregated_prefill cannot be applied from a dynamic config file: "
        "the router makes its prefill and decode clients only at start-up and every reload "
        "rebuilds the routing logic without the prefill and decode labels, so requests fail "
        "(500) or go to the previous backends; run such a router with --routing-logic, "
        "--static-model-labels, --prefill-model-labels and --decode-model-labels flags, "
        "without --dynamic-config-json"
    ),
    "disaggregated_prefill_orchestrated": (
        "spec.routingLogic disaggregated_prefill_orchestrated cannot be applied from a dynamic "
        "config file: every reload (often the first, right after start-up) rebuilds it "
        "without the prefill and decode labels and every request then fails with 503; run such a "
        "router with --routing-logic, --static-model-labels, --prefill-model-labels and "
        "--decode-model-labels flags, without --dynamic-config-json"
    ),
}

# The router's keys that no spec field sets, and why.
NOT_EXPOSED: dict[str, str] = {
    "callbacks": "makes the router import a Python module by name; a wrong one leaves it "
    "without an HTTP server",
}


class Written(enum.Enum):
    """How a spec field reaches the file."""

    COPIED = "copied when set (strings trimmed)"
    RENDERED = "rendered by the named function"
    NOT_WRITTEN = "not written, for the reason given"


@dataclass(frozen=True, slots=True)
class SpecField:
    """One ``StaticRouteSpec`` field: the router key it becomes, and how."""

    field: str
    key: str | None
    written: Written
    # RENDERED: the function of this module that writes it; NOT_WRITTEN: why not;
    # COPIED: what else happens to it, if anything.
    note: str = ""


def _copied(field: str, note: str = "") -> SpecField:
    return SpecField(field, field, Written.COPIED, note)


def _rendered(field: str, function: str) -> SpecField:
    return SpecField(field, field, Written.RENDERED, function)


def _not_written(field: str, reason: str) -> SpecField:
    return SpecField(field, None, Written.NOT_WRITTEN, reason)


SPEC_FIELDS: tuple[SpecField, ...] = (
    _rendered("service_discovery", "render"),  # always written: the router requires it
    _rendered("routing_logic", "render"),  # always written; refused ones never reach it
    _rendered("static_backends", "_check_backends"),
    _rendered("static_models", "_items"),
    _rendered("static_aliases", "_aliases"),
    _rendered("static_model_labels", "_model_labels"),
    _rendered("static_model_types", "_model_types"),
    _copied("static_backend_health_checks"),
    _copied("static_backend_health_check_interval"),
    _copied("static_backend_health_check_timeout_seconds"),
    _copied("prefill_model_labels"),
    _copied("decode_model_labels"),
    _copied("k8s_port"),
    _copied("k8s_namespace", "with k8s discovery, render names the StaticRoute's when unset"),
    _copied("k8s_label_selector"),
    _copied("session_key"),
    _not_written("router_ref", "the router Service the operator probes"),
    _not_written("router_selector", "the router Services the operator probes"),
    _not_written("router_port", "the Service port the operator probes"),
    _not_written("health_check", "how the operator probes the routers"),
    _not_written("config_map_name", "where the operator writes the file"),
)

_COPIED = tuple(row.field for row in SPEC_FIELDS if row.written is Written.COPIED)


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


def _aliases(spec: StaticRouteSpec, models: list[str], problems: list[str]) -> str | None:
    """The trimmed ``alias:model`` pairs, each pointing at one of ``models``."""
    if spec.static_aliases is None:
        return None
    if spec.service_discovery == "k8s":
        problems.append(
            "spec.staticAliases has no effect with serviceDiscovery k8s (the router's "
            "Kubernetes discovery has no aliases, so requests for an alias get 404): "
            "remove it, or use serviceDiscovery static"
        )
    cleaned = []
    for pair in _items(spec.static_aliases, "staticAliases", problems):
        parts = [part.strip() for part in pair.split(":")]
        if len(parts) != 2 or not all(parts):
            problems.append(
                f'spec.staticAliases: {pair!r} is not alias:model; write "alias:model,alias:model"'
            )
            continue
        if models and parts[1] not in models:
            problems.append(
                f"spec.staticAliases: {pair!r} points at {parts[1]!r}, which is not in "
                "spec.staticModels, so the router answers 404 for it; name one of the models"
            )
        cleaned.append(":".join(parts))
    return ",".join(cleaned)


def _model_labels(spec: StaticRouteSpec, models: list[str], problems: list[str]) -> str | None:
    """The trimmed labels, one per model (the router fails every request with fewer)."""
    if spec.static_model_labels is None:
        return None
    labels = [label.strip() for label in spec.static_model_labels.split(",")]
    if models and len(labels) != len(models):
        problems.append(
            f"spec.staticModelLabels has {len(labels)} labels but spec.staticModels has "
            f"{len(models)} models; give one label per model (with fewer, the router "
            "fails every request)"
        )
    return ",".join(labels)


def _model_types(spec: StaticRouteSpec, models: list[str], problems: list[str]) -> str | None:
    """The trimmed model types, each one the router knows, one per model."""
    if spec.static_model_types is None:
        return None
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
    return ",".join(types)


def render(spec: StaticRouteSpec, *, namespace: str | None = None) -> RenderedConfig:
    """Build the router's config from ``spec``, or raise :class:`InvalidSpecError`.

    ``namespace`` is the StaticRoute's: with k8s discovery and no ``k8sNamespace`` the
    file names it, because the router's reload would otherwise watch ``namespace=None``.
    """
    problems: list[str] = []
    content: dict[str, Any] = {
        "service_discovery": spec.service_discovery,
        "routing_logic": spec.routing_logic,
    }
    if spec.routing_logic in UNSUPPORTED_ROUTING_LOGIC:
        problems.append(UNSUPPORTED_ROUTING_LOGIC[spec.routing_logic])

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

    aliases = _aliases(spec, models, problems)
    if aliases is not None:
        content["static_aliases"] = aliases

    labels = _model_labels(spec, models, problems)
    if labels is not None:
        content["static_model_labels"] = labels
    types = _model_types(spec, models, problems)
    if types is not None:
        content["static_model_types"] = types
    if spec.static_backend_health_checks and not spec.static_model_types:
        problems.append(
            "spec.staticModelTypes is required when staticBackendHealthChecks is true "
            f"(one of {', '.join(MODEL_TYPES)} per model)"
        )
    if spec.static_backend_health_checks and spec.service_discovery == "k8s":
        problems.append(
            "spec.staticBackendHealthChecks has no effect with serviceDiscovery k8s (the "
            "router's Kubernetes discovery ignores it): remove it, or use serviceDiscovery static"
        )

    for field in _COPIED:
        value = getattr(spec, field)
        if value is None:
            continue
        content[field] = value.strip() if isinstance(value, str) else value
    if spec.service_discovery == "k8s" and not content.get("k8s_namespace"):
        if namespace is None:
            problems.append(
                "spec.k8sNamespace is required when serviceDiscovery is k8s and the "
                "StaticRoute's namespace is not known"
            )
        else:
            content["k8s_namespace"] = namespace

    if problems:
        raise InvalidSpecError("; ".join(problems))
    unknown_keys = set(content) - ROUTER_KEYS
    if unknown_keys:  # a programming error, never the user's: fail loudly
        raise AssertionError(f"router config would carry unknown keys {sorted(unknown_keys)}")
    return RenderedConfig(content=content, data=serialize(content))


def serialize(content: dict[str, Any]) -> str:
    """The canonical bytes: sorted keys, two-space indent, trailing newline.

    Every reconcile renders the file to compare it with the ConfigMap. ``json.dumps``
    with an indent runs its encoder in pure Python; the router's file is one flat
    object of strings, numbers and booleans, so it is written here line by line with
    the C encoder for each value: the same bytes, in a third of the time. Anything
    else (nothing the operator renders today) goes through ``json.dumps``.
    """
    if content and all(type(value) in _SCALARS for value in content.values()):
        lines = ",\n  ".join(f"{_encode(key)}: {_encode(content[key])}" for key in sorted(content))
        return "{\n  " + lines + "\n}\n"
    return json.dumps(content, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


_SCALARS = frozenset({str, int, bool, type(None)})
_encode = json.JSONEncoder(ensure_ascii=False).encode


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


# A ConfigMap's name is a DNS subdomain (Kubernetes' IsDNS1123Subdomain): at most 253
# characters of lower-case alphanumerics, "-" and ".", alphanumeric at each end of a label.
CONFIG_MAP_NAME_MAX = 253
CONFIG_MAP_NAME_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def check_config_map_name(route_name: str, spec: StaticRouteSpec) -> None:
    """Refuse a ConfigMap name the API server would refuse, before any write.

    The CRD refuses both at admission (a root CEL rule for the default
    ``<name>-config``, a pattern on ``configMapName``); this catches objects that got
    past an older CRD, so the user reads what to change instead of an API error.
    """
    if spec.config_map_name is None:
        name = config_map_name(route_name, spec)
        if len(name) > CONFIG_MAP_NAME_MAX:
            shown = default_config_map_name(f"{route_name[:20]}...")
            raise InvalidSpecError(
                f"the default ConfigMap name {shown} would be {len(name)} "
                f"characters, more than the {CONFIG_MAP_NAME_MAX} Kubernetes allows: "
                "set spec.configMapName"
            )
        return
    name = spec.config_map_name
    if len(name) > CONFIG_MAP_NAME_MAX or not CONFIG_MAP_NAME_RE.match(name):
        raise InvalidSpecError(
            f"spec.configMapName {name[:64]!r} is not a valid ConfigMap name: use at most "
            f"{CONFIG_MAP_NAME_MAX} lower-case letters, digits, '-' and '.', starting and "
            "ending with a letter or digit"
        )
