"""Loading cluster config with kubernetes-asyncio's loader, without its generated client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import asyncio, json, sys
from router_controller.kubeconfig import load_configuration
configuration = asyncio.run(load_configuration(sys.argv[1]))
auth = asyncio.run(configuration.auth_settings())
print(json.dumps({
    "host": configuration.host,
    "auth": auth["BearerToken"]["value"],
    "modules": sorted(m for m in sys.modules if m.startswith("kubernetes_asyncio")),
}))
"""


def test_kubeconfig_loads_without_the_generated_client(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://10.9.8.7:6443"}}],
                "users": [{"name": "u", "user": {"token": "s3cret"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(kubeconfig)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["host"] == "https://10.9.8.7:6443"
    assert loaded["auth"] == "Bearer s3cret"
    assert "kubernetes_asyncio.client.models" not in loaded["modules"]
    assert "kubernetes_asyncio.client.api" not in loaded["modules"]
    assert len(loaded["modules"]) < 20


def test_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    program = (
        "import asyncio, sys\n"
        "from router_controller.kubeconfig import ConfigError, load_configuration\n"
        "try:\n"
        "    asyncio.run(load_configuration(sys.argv[1]))\n"
        "except ConfigError as err:\n"
        "    print('ConfigError', err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "absent")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ConfigError")
