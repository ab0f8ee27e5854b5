"""Typed, frozen settings of one operator process, grouped by concern.

The command line (:mod:`router_controller.cli`) is the only producer; everything
else receives the part it needs. Durations are seconds as floats.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LeaderElection(_Frozen):
    enabled: bool = False
    lease_name: str = "27bc728d.vllm.ai"
    lease_namespace: str | None = None  # None: the Pod's namespace, else "default"
    lease_duration: float = Field(default=15.0, gt=0)
    renew_deadline: float = Field(default=10.0, gt=0)
    retry_period: float = Field(default=2.0, gt=0)


class Serving(_Frozen):
    metrics_bind_address: str = "0"
    metrics_secure: bool = True
    metrics_cert_path: str | None = None
    metrics_cert_name: str = "tls.crt"
    metrics_cert_key: str = "tls.key"
    health_probe_bind_address: str = ":8081"
    enable_http2: bool = False


class Logging(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class Settings(_Frozen):
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    max_concurrent_reconciles: int = Field(default=4, ge=1)
    allow_cross_namespace_router_ref: bool = False
    probe_concurrency: int = Field(default=64, ge=1)
    shutdown_timeout: float = Field(default=30.0, gt=0)
    leader_election: LeaderElection = LeaderElection()
    serving: Serving = Serving()
    logging: Logging = Logging()
