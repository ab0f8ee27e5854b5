"""The Makefile's promises that need no cluster: kubebuilder's target names, and clear
messages when a tool is missing (no container engine runs on this machine)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from router_controller_dev import repo

REPO = repo.root()
KUBEBUILDER_TARGETS = (
    "help", "run", "test", "lint", "install", "uninstall", "deploy", "undeploy",
    "build-installer", "docker-build", "docker-push", "manifests", "bench",
)  # fmt: skip


def make(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_kubebuilders_targets() -> None:
    result = make("help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    listed = {name.replace("\x1b[36m", "").replace("\x1b[0m", "") for name in listed}
    assert set(KUBEBUILDER_TARGETS) <= listed


def test_docker_build_says_when_no_engine_is_reachable(tmp_path: Path) -> None:
    fake = tmp_path / "docker"  # a docker client whose daemon is not there
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = make("docker-build", "IMG=example.com/rc:v1", path=f"{tmp_path}:{os.environ['PATH']}")
    assert result.returncode != 0
    assert "no docker engine is reachable" in result.stderr


def test_docker_push_names_a_missing_tool() -> None:
    result = make("docker-push", "IMG=example.com/rc:v1", "CONTAINER_TOOL=no-such-tool")
    assert result.returncode != 0
    assert "no-such-tool not found" in result.stderr
    assert "install Docker" in result.stderr


def test_deploy_names_a_missing_kubectl() -> None:
    result = make("deploy", "IMG=example.com/rc:v1", "KUBECTL=no-such-kubectl")
    assert result.returncode != 0
    assert "no-such-kubectl not found" in result.stderr
    assert "install kubectl" in result.stderr
