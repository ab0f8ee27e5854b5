"""The specs the operator accepts and refuses, and what the router does with each file.

One table serves two checks: ``tests/unit/test_fakerouter.py`` runs every case on the
fake router the tests use, and ``make router-conformance`` (``tests/conformance/run.py``)
runs the same cases on a real production-stack router, so the fake cannot drift from
the router it stands for. Backend URLs are placeholders (``{0}``, ``{1}``, ...) filled
with the stand-in backends' addresses; backend *i* serves model ``MODELS[i]``.

Refused specs are turned into the file an operator without these rules would write
(:func:`unchecked_file`: the set fields, snake_case, as the Go controller wrote them),
and each carries the misbehaviour the router shows with that file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from router_controller.api import StaticRouteSpec
from router_controller.routerconfig import ROUTER_KEYS, render

NAMESPACE = "conformance"
MODELS = ("org/model-a", "org/model-b", "org/model-c")
# Where every reload case starts from: other backends than the refused files name, so a
# half-applied reload shows (requests for model-a succeed while /health says model-c).
BASE = "one-backend"


def _b(*indexes: int) -> str:
    return ",".join(f"{{{i}}}" for i in indexes)


def _m(*indexes: int) -> str:
    return ",".join(MODELS[i] for i in indexes)


@dataclass(frozen=True)
class Accepted:
    """A spec the operator writes; every model (and alias) must reach its backend."""

    id: str
    spec: dict[str, Any]
    requests: tuple[str, ...] = ()  # extra model names to request (aliases)
    k8s: bool = False  # k8s discovery: no pods here, so only /health and the log count


# What the router does with a refused spec's file:
#   crash        - at start-up the process exits or serves no HTTP
#   refused      - a reload is refused and /health keeps the previous config
#   half-applied - a reload switches backends but /health keeps the previous config
#   fails        - /health shows the file, and requests fail (status in `status`)
#   no-namespace - k8s discovery: the pod watch fails over and over for namespace=None
Verdict = Literal["crash", "refused", "half-applied", "fails", "no-namespace"]


@dataclass(frozen=True)
class Refused:
    """A spec the operator refuses (or completes), and what the router does with it."""

    id: str
    spec: dict[str, Any]
    start: Verdict | None = None  # the router started on the file (None: not tried)
    reload: Verdict | None = None  # the router reloading from a good file to it
    status: int = 0  # for "fails": the status every request gets
    request: str = ""  # for "fails": the model requested (default: the first model)


STATIC = {"staticBackends": _b(0, 1), "staticModels": _m(0, 1)}

ACCEPTED = (
    Accepted("roundrobin", dict(STATIC)),
    Accepted(
        "session",
        {**STATIC, "routingLogic": "session", "sessionKey": "x-user-id"},
    ),
    Accepted(
        "prefixaware-three-backends",
        {"staticBackends": _b(0, 1, 2), "staticModels": _m(0, 1, 2), "routingLogic": "prefixaware"},
    ),
    Accepted(
        "aliases-labels-spaces",
        {
            "staticBackends": " {0} , {1} ",
            "staticModels": f" {MODELS[0]} , {MODELS[1]} ",
            "staticAliases": f"fast : {MODELS[0]}, big:{MODELS[1]}",
            "staticModelLabels": "small,large",
        },
        requests=("fast", "big"),
    ),
    Accepted(
        "backend-health-checks",
        {
            **STATIC,
            "staticModelTypes": "chat,completion",
            "staticBackendHealthChecks": True,
            "staticBackendHealthCheckInterval": 5,
            "staticBackendHealthCheckTimeoutSeconds": 2,
        },
    ),
    Accepted("one-backend", {"staticBackends": _b(2), "staticModels": _m(2)}),
    Accepted("k8s", {"serviceDiscovery": "k8s", "k8sPort": 8000}, k8s=True),
)

LABELLED = {"staticModelLabels": "p,d", "prefillModelLabels": "p", "decodeModelLabels": "d"}

REFUSED = (
    Refused("kvaware", {**STATIC, "routingLogic": "kvaware"}, "crash", "half-applied"),
    Refused(
        "disaggregated-prefill-without-labels",
        {**STATIC, "routingLogic": "disaggregated_prefill"},
        "fails",
        "fails",
        status=500,
    ),
    Refused(
        "disaggregated-prefill-on-reload",
        {**STATIC, "routingLogic": "disaggregated_prefill", **LABELLED},
        reload="fails",
        status=500,
    ),
    Refused(
        "disaggregated-prefill-orchestrated",
        {**STATIC, "routingLogic": "disaggregated_prefill_orchestrated", **LABELLED},
        reload="fails",  # at start-up it races the watcher's first load: either outcome
        status=503,
    ),
    Refused("session-without-key", {**STATIC, "routingLogic": "session"}, "crash", "half-applied"),
    Refused(
        "invalid-routing-logic", {**STATIC, "routingLogic": "fastest"}, "crash", "half-applied"
    ),
    Refused(
        "count-mismatch", {"staticBackends": _b(0, 1), "staticModels": _m(0)}, "crash", "refused"
    ),
    Refused(
        "short-host-name",
        {"staticBackends": "{0},http://backend-b:8000", "staticModels": _m(0, 1)},
        reload="refused",
    ),
    Refused(
        "fewer-labels-than-models",
        {**STATIC, "staticModelLabels": "only-one"},
        reload="fails",
        status=500,
    ),
    Refused(
        "alias-of-an-unlisted-model",
        {**STATIC, "staticAliases": "ghost:org/not-served"},
        reload="fails",
        status=404,
        request="ghost",
    ),
    Refused("health-checks-without-types", {**STATIC, "staticBackendHealthChecks": True}, "crash"),
    Refused("unknown-key", {**STATIC, "callbacks_module": "x"}, reload="refused"),
    Refused(
        "k8s-without-namespace", {"serviceDiscovery": "k8s", "k8sPort": 8000}, reload="no-namespace"
    ),
)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def fill(value: Any, backends: list[str]) -> Any:
    return value.format(*backends) if isinstance(value, str) else value


def operator_file(case: Accepted, backends: list[str]) -> dict[str, Any]:
    """The file the operator writes for an accepted case."""
    spec = {key: fill(value, backends) for key, value in case.spec.items()}
    return render(StaticRouteSpec.model_validate(spec), namespace=NAMESPACE).content


def unchecked_file(case: Refused, backends: list[str]) -> dict[str, Any]:
    """The file for a refused case as written without the operator's rules."""
    content: dict[str, Any] = {"service_discovery": "static", "routing_logic": "roundrobin"}
    for key, value in case.spec.items():
        content[_snake(key).replace("k8_s", "k8s")] = fill(value, backends)
    assert case.id == "unknown-key" or set(content) <= ROUTER_KEYS, content
    return content


def refused_by_operator(case: Refused, backends: list[str]) -> str:
    """What the operator does instead of writing the unchecked file (it never writes it)."""
    spec = {key: fill(value, backends) for key, value in case.spec.items()}
    try:
        rendered = render(StaticRouteSpec.model_validate(spec), namespace=NAMESPACE)
    except ValueError as err:  # InvalidSpecError, or pydantic's ValidationError
        return "refused: " + " ".join(str(err).split())
    if rendered.content != unchecked_file(case, backends):
        missing = sorted(set(rendered.content) - set(unchecked_file(case, backends)))
        return "written with " + ", ".join(f"{k}={rendered.content[k]!r}" for k in missing)
    raise AssertionError(f"the operator writes {case.id} unchanged")
