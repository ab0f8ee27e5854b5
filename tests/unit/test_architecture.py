"""The runtime package's layering (docs/architecture.md), as ``make lint`` checks it.

The contract lives in pyproject.toml's ``[tool.importlinter]``. These tests run the
same check on a copy of the package, once as it is and once with a layer broken on
purpose, so a contract that stopped constraining anything (a renamed module left
out, a layer mistyped) fails here instead of passing silently.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from router_controller_dev import repo

REPO = repo.root()
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(copy / "pyproject.toml")],
        cwd=copy,
        env={"PYTHONPATH": str(copy / "operator"), "PATH": "/usr/bin:/bin", "COLUMNS": "300"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in ("router_controller", "router_controller_dev"):
        shutil.copytree(
            REPO / "operator" / package,
            tmp_path / "operator" / package,
            ignore=shutil.ignore_patterns("__pycache__", "crd"),
        )
    return tmp_path


def test_the_package_keeps_its_layers(copy: Path) -> None:
    result = _lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "imports"),
    [
        ("api", "router_controller.manager"),  # a building block reaching for the top
        ("kube", "router_controller.health"),
        ("health", "router_controller.reconciler"),  # health below the controllers
        ("reconcile", "router_controller.staticroute"),
        ("wiring", "router_controller.manager"),  # the manager runs what wiring builds
        ("controller", "router_controller.health"),  # siblings know nothing of each other
        ("server", "router_controller_dev.pki"),  # the image has no development package
    ],
)
def test_importing_upwards_breaks_the_contract(copy: Path, module: str, imports: str) -> None:
    source = copy / "operator" / "router_controller" / f"{module}.py"
    source.write_text(source.read_text() + f"\nimport {imports}  # noqa\n")
    result = _lint(copy)
    assert result.returncode != 0, result.stdout
    assert f"router_controller.{module} -> {imports} (l." in result.stdout
