"""The wheel, which is what the image installs, holds the operator and nothing else.

The wheel is built from the files the Dockerfile copies (``pip wheel`` with build
isolation, as ``pip install .`` in the image does), and its file list is checked: only
``router_controller`` and its metadata, none of the development package. Then it is
installed into a fresh virtualenv (no system site-packages, no ``PYTHONPATH``) with
nothing but its runtime dependencies at the versions of ``constraints.txt``;
``pip check`` passes there, and every module of ``router_controller`` imports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from router_controller_dev import repo

REPO = repo.root()
PACKAGE = REPO / "operator" / "router_controller"
# What the Dockerfile's build stage copies before `pip install .`.
SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "operator", "config/crd/bases")
DEV_TOOLING = ("router_controller_dev", "envtest", "devrun", "fakerouter", "hostile")

IMPORT_EVERYTHING = """
import importlib, importlib.util, json, pkgutil, sys
import router_controller
names = sorted(
    info.name
    for info in pkgutil.walk_packages(router_controller.__path__, "router_controller.")
)
for name in names:
    if name.endswith(".__main__"):  # runs the operator; found is enough
        assert importlib.util.find_spec(name) is not None
    else:
        importlib.import_module(name)
print(json.dumps({
    "file": router_controller.__file__,
    "modules": names,
    "dev": importlib.util.find_spec("router_controller_dev") is not None,
}))
"""


def _clean_env() -> dict[str, str]:
    """This environment without what would put the checkout on ``sys.path``."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }


def _run(*argv: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def runtime_modules() -> set[str]:
    """The modules of the source package, by name."""
    return {
        "router_controller" + ("." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py"
    } | {"router_controller"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        src, dest = REPO / name, source / name
        if src.is_dir():
            shutil.copytree(
                src,
                dest,
                symlinks=True,  # the packaged CRD is a symlink into config/crd/bases
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
            )
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    out = tmp_path_factory.mktemp("wheel")
    _run(
        sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", out, "-q",
        cwd=out, timeout=600,
    )  # fmt: skip
    (built,) = out.glob("router_controller-*.whl")
    return built


@pytest.mark.timeout(900)
def test_the_wheel_holds_only_the_runtime_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    (metadata,) = tops - {"router_controller"}
    assert re.fullmatch(r"router_controller-[\w.]+\.dist-info", metadata), tops
    for name in names:
        assert not any(part in name for part in DEV_TOOLING), name
    shipped = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in names
        if name.endswith(".py")
    }
    assert shipped == runtime_modules()
    assert "router_controller/crd/production-stack.vllm.ai_staticroutes.yaml" in names
    assert "router_controller/py.typed" in names


@pytest.mark.timeout(900)
def test_the_wheel_alone_installs_checks_and_imports_in_a_clean_venv(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    _run(
        python, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", wheel,
        cwd=tmp_path, timeout=800,
    )  # fmt: skip
    _run(python, "-m", "pip", "check", cwd=tmp_path, timeout=120)

    found = json.loads(_run(python, "-c", IMPORT_EVERYTHING, cwd=tmp_path, timeout=120).stdout)
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert set(found["modules"]) | {"router_controller"} == runtime_modules()
    assert not {"router_controller.envtest", "router_controller.devrun"} & set(found["modules"])
    assert not found["dev"], "the development package must not be installed"

    # The subcommand the image ships besides the operator, with its packaged CRD.
    checked = _run(
        venv / "bin" / "router-controller", "check", "-f", REPO / "config" / "samples",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0
