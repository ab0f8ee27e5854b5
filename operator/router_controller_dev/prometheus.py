"""A real Prometheus (Debian's ``prometheus``) scraping the operator, and its query API.

The dashboard and the alert rules are PromQL; only a real Prometheus tells whether
each expression finds the series it names with the labels it selects. It scrapes
``/metrics`` over HTTPS with a ServiceAccount's token, as a ServiceMonitor would, and
optionally evaluates rule groups.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from router_controller_dev.envtest import free_port
from router_controller_dev.http_client import http_get, http_status
from router_controller_dev.waiting import wait_for

PROMETHEUS = shutil.which("prometheus")

# Starts a helper program: (name, *argv) -> the process, its output in <folder>/<name>.log.
Start = Callable[..., subprocess.Popen[bytes]]


@dataclass
class Prometheus:
    """A running Prometheus's HTTP API."""

    api: str

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result vector."""
        status, text = await http_get(f"{self.api}/api/v1/query?{urlencode({'query': promql})}")
        assert status == 200, f"{promql}: {text}"
        body = json.loads(text)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


async def start_prometheus(
    start: Start,
    folder: Path,
    *,
    job: str,
    target: str,
    token: str,
    interval: str = "1s",
    rules: dict[str, Any] | None = None,
) -> Prometheus:
    """Scrape ``https://<target>/metrics`` with a bearer token; return once it is ready.

    ``start`` runs it (its output must go to ``folder/prometheus.log``); ``rules`` are
    rule groups (a rules file's content) evaluated every ``interval``.
    """
    assert PROMETHEUS is not None
    token_file = folder / "prometheus-token"
    token_file.write_text(token)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scheme": "https",
                "tls_config": {"insecure_skip_verify": True},
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    if rules is not None:
        (folder / "rules.yaml").write_text(yaml.safe_dump(rules))
        config["global"]["evaluation_interval"] = interval
        config["rule_files"] = [str(folder / "rules.yaml")]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    process = start(
        "prometheus",
        PROMETHEUS,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    )

    async def ready() -> bool:
        if process.poll() is not None:
            output = (folder / "prometheus.log").read_text(errors="replace")
            raise AssertionError(f"prometheus exited:\n{output}")
        return await http_status(f"{api}/-/ready") == 200

    await wait_for(ready, timeout=120, what="prometheus ready")
    return Prometheus(api)
