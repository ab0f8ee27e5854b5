"""Typed, frozen settings of one operator process, grouped by concern.

The command line (:mod:`router_controller.cli`) is the only producer; everything
else receives the part it needs. Durations are seconds as floats.

Each default is written here once. The command line takes its flags' defaults from
these fields, and its help text from their ``description``, where ``{default}`` stands
for the default as the flag spells it (``15s``, ``true``), so help and behaviour cannot
drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def parse_bind(address: str) -> tuple[str | None, int] | None:
    """A Go-style listen address -> (host, port); ``None`` when the endpoint is off.

    ``":8443"`` -> (None, 8443): every interface, IPv4 and IPv6, as Go listens;
    ``"127.0.0.1:0"`` -> as given (port 0: any free port); ``"[::1]:8080"`` -> ("::1", 8080);
    ``"0"`` or ``""`` -> None, kubebuilder's way of turning an endpoint off.
    """
    if address in ("0", ""):
        return None
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT or :PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or None, int(port))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LeaderElection(_Frozen):
    enabled: bool = Field(
        default=False, description="elect a leader with a Lease so only one replica writes"
    )
    lease_name: str = Field(
        default="27bc728d.vllm.ai",
        description="Lease name (default {default}, the Go controller's)",
    )
    lease_namespace: str | None = Field(  # None: the Pod's namespace, else "default"
        default=None, description="Lease namespace; default: the Pod's namespace, else default"
    )
    lease_duration: float = Field(
        default=15.0,
        gt=0,
        description="how long a lease is valid without renewal (default {default})",
    )
    renew_deadline: float = Field(
        default=10.0,
        gt=0,
        description="how long the leader keeps trying to renew before giving up "
        "(default {default})",
    )
    retry_period: float = Field(
        default=2.0, gt=0, description="time between election attempts (default {default})"
    )

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElection:
        # client-go's rule: a leader must give up before a candidate may take over.
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "need retry period < renew deadline < lease duration, got "
                f"{self.retry_period}s, {self.renew_deadline}s, {self.lease_duration}s"
            )
        return self


class Serving(_Frozen):
    metrics_bind_address: str = Field(
        default="0",
        description="address of the metrics endpoint, e.g. :8443 (HTTPS) or :8080 (HTTP); "
        "0 disables",
    )
    metrics_secure: bool = Field(
        default=True,
        description="serve metrics over HTTPS with TokenReview/SubjectAccessReview auth "
        "(default {default})",
    )
    metrics_cert_path: str | None = Field(
        default=None,
        description="folder holding the metrics serving certificate; default: self-signed",
    )
    metrics_cert_name: str = Field(
        default="tls.crt", description="certificate file name (default {default})"
    )
    metrics_cert_key: str = Field(
        default="tls.key", description="key file name (default {default})"
    )
    health_probe_bind_address: str = Field(
        default=":8081",
        description="address of /healthz and /readyz (default {default}); 0 disables",
    )
    enable_http2: bool = Field(
        default=False,
        description="accepted for the Go controller's manifests; HTTP/2 is never served, so "
        "true has no effect (logged as unused); default {default}",
    )

    @field_validator("metrics_bind_address", "health_probe_bind_address")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        parse_bind(value)
        return value


TimeEncoding = Literal["rfc3339nano", "rfc3339", "iso8601", "millis", "nanos", "epoch"]
TIME_ENCODINGS: tuple[str, ...] = get_args(TimeEncoding)


class Logging(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    # JSON field names: structlog's (event, timestamp) or zap's (msg, ts), see cli.py.
    keys: Literal["structlog", "zap"] = "structlog"
    # Records at or above this level carry a stack trace ("panic": only critical ones);
    # None: only records of an exception, with its traceback.
    stacktrace_level: Literal["info", "warning", "error", "panic"] | None = None
    # zap's time encodings; None: ISO 8601 with microseconds (structlog keys) or
    # RFC 3339 (zap keys), controller-runtime's default.
    time_encoding: TimeEncoding | None = None


class Settings(_Frozen):
    kubeconfig: str | None = Field(
        default=None,
        description="path to a kubeconfig; default: in-cluster config, then $KUBECONFIG, "
        "~/.kube/config",
    )
    namespaces: tuple[str, ...] = Field(  # empty: all namespaces
        default=(),
        description="comma-separated namespaces to watch (env WATCH_NAMESPACES); default: all",
    )
    max_concurrent_reconciles: int = Field(
        default=4, ge=1, description="reconcile workers (default {default})"
    )
    allow_cross_namespace_router_ref: bool = Field(
        default=False, description="let spec.routerRef name a Service in another namespace"
    )
    # Shared fairly: one namespace may hold half, one StaticRoute a quarter (fairshare.py),
    # so one namespace alone gets the 64 the pool had before it was shared.
    probe_concurrency: int = Field(
        default=128,
        ge=1,
        description="router /health probes in flight at once, shared between namespaces: one "
        "namespace may hold half of them, one StaticRoute a quarter (default {default})",
    )
    # How long a healthy router may serve another config than the file before it is
    # ConfigNotApplied: routerstate.CONFIG_NOT_APPLIED_AFTER, derived from the kubelet's
    # and the router's documented intervals. Not a flag; shortened only in tests.
    config_not_applied_after: float = Field(default=150.0, gt=0)
    # With the Event drain and the Lease release it must fit the Deployment's
    # terminationGracePeriodSeconds (see manager.shutdown_budget).
    shutdown_timeout: float = Field(
        default=15.0,
        gt=0,
        description="how long in-flight reconciles may take after SIGTERM (default {default})",
    )
    leader_election: LeaderElection = LeaderElection()
    serving: Serving = Serving()
    logging: Logging = Logging()
