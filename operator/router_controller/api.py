"""The StaticRoute API (``production-stack.vllm.ai/v1alpha1``) as pydantic models.

The API server has already applied the CRD's schema (defaults, enums, CEL rules)
to whatever reaches the operator; these models are the operator's typed view of
that object and the second line of defence: anything that got past the schema
(an older CRD, a hand-edited object) fails here with a message naming the field.

The CRD in ``config/crd/bases`` is checked against these models by a test, so the
two cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from router_controller.kube import Resource

GROUP = "production-stack.vllm.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StaticRoute"
PLURAL = "staticroutes"
STATICROUTES = Resource(GROUP, VERSION, PLURAL)

CONFIG_KEY = "dynamic_config.json"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "router-controller"

# A Service port's name (validation.IsValidPortName: an IANA_SVC_NAME of at most 15).
PORT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
PORT_NAME_MAX = 15

ServiceDiscovery = Literal["static", "k8s"]
RoutingLogic = Literal[
    "roundrobin",
    "session",
    "kvaware",
    "prefixaware",
    "disaggregated_prefill",
    "disaggregated_prefill_orchestrated",
]
MODEL_TYPES = (
    "chat",
    "completion",
    "embeddings",
    "rerank",
    "score",
    "transcription",
    "vision",
    "messages",
)


def _camel(name: str) -> str:
    """snake_case -> camelCase, keeping "k8s" as Kubernetes writes it (``k8sPort``)."""
    return to_camel(name).replace("k8S", "k8s")


class _Model(BaseModel):
    """Frozen, camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=_camel,
        populate_by_name=True,
    )


# A probe holds one of the operator's shared probe slots until it ends, so its timeout
# is bounded: vllm_router answers /health from memory, and a minute is far beyond any
# healthy answer. The CRD says the same (maximum, and a CEL rule for <= periodSeconds).
MAX_TIMEOUT_SECONDS = 60


class HealthCheck(_Model):
    timeout_seconds: int = Field(default=5, ge=1, le=MAX_TIMEOUT_SECONDS)
    period_seconds: int = Field(default=10, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _timeout_within_period(self) -> HealthCheck:
        if self.timeout_seconds > self.period_seconds:
            raise ValueError(
                f"healthCheck.timeoutSeconds ({self.timeout_seconds}) must not exceed "
                f"healthCheck.periodSeconds ({self.period_seconds}): lower timeoutSeconds "
                "(the default is 5) or raise periodSeconds"
            )
        return self


class ObjectReference(_Model):
    """The fields of core/v1 ObjectReference, as the original API used it."""

    api_version: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class LabelSelectorRequirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(_Model):
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class StaticRouteSpec(_Model):
    # The original controller's seven fields: names, types and defaults kept.
    service_discovery: ServiceDiscovery = "static"
    routing_logic: RoutingLogic = "roundrobin"
    static_backends: str | None = None
    static_models: str | None = None
    router_ref: ObjectReference | None = None
    health_check: HealthCheck | None = None
    config_map_name: str | None = None
    # Extensions.
    router_selector: LabelSelector | None = None
    router_port: int | str | None = None
    static_aliases: str | None = None
    static_model_labels: str | None = None
    static_model_types: str | None = None
    static_backend_health_checks: bool | None = None
    static_backend_health_check_interval: int | None = Field(default=None, ge=1)
    static_backend_health_check_timeout_seconds: int | None = Field(default=None, ge=1)
    prefill_model_labels: str | None = None
    decode_model_labels: str | None = None
    k8s_port: int | None = Field(default=None, ge=1, le=65535)
    k8s_namespace: str | None = None
    k8s_label_selector: str | None = None
    session_key: str | None = None

    @field_validator("router_port")
    @classmethod
    def _port_name_or_number(cls, value: int | str | None) -> int | str | None:
        """A Service port as a ``targetPort`` names one: 1-65535, or an IANA service name."""
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"routerPort {value} is not a port number (1-65535)")
        if isinstance(value, str) and (
            len(value) > PORT_NAME_MAX or not PORT_NAME_RE.fullmatch(value)
        ):
            raise ValueError(
                f"routerPort {value!r} is not a port name: at most 15 lower-case letters, "
                "digits and '-', starting and ending with a letter or digit"
            )
        return value


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    observed_generation: int | None = None
    last_transition_time: str


class RouterStatus(_Model):
    address: str
    healthy: bool
    config_synced: bool
    last_probe_time: str | None = None
    message: str = ""


class StaticRouteStatus(_Model):
    config_map_ref: str | None = None
    last_applied_time: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    routers: list[RouterStatus] | None = None


CONFIG_MAP_SUFFIX = "-config"


def default_config_map_name(route_name: str) -> str:
    """The ConfigMap a StaticRoute writes unless ``spec.configMapName`` says otherwise."""
    return f"{route_name}{CONFIG_MAP_SUFFIX}"


def config_map_name(name: str, spec: StaticRouteSpec) -> str:
    """The ConfigMap a StaticRoute writes: ``spec.configMapName`` or ``<name>-config``."""
    return spec.config_map_name or default_config_map_name(name)
