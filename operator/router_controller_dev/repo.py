"""Where the repository is, for tools that read its files (``config/``, ``hack/``).

The development package is imported from a checkout, but nothing here assumes where
its own file sits: a path computed from ``__file__`` points nowhere once a package
is installed, and silently somewhere else in a copy. Instead the root is named by
``ROUTER_CONTROLLER_REPO``, or found by walking up from the working directory to the
``pyproject.toml`` of the project named ``router-controller``.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path

ENV = "ROUTER_CONTROLLER_REPO"
PROJECT = "router-controller"


class RepoNotFound(RuntimeError):
    """No router-controller checkout here; the message says what to do."""


def _is_root(folder: Path) -> bool:
    try:
        text = (folder / "pyproject.toml").read_text()
    except OSError:
        return False
    try:
        name = tomllib.loads(text).get("project", {}).get("name")
    except tomllib.TOMLDecodeError:
        return False
    return bool(name == PROJECT)


def find(start: Path, env: str | None = None) -> Path:
    """The repository root: ``env`` if given, else the nearest checkout at or above ``start``."""
    if env:
        named = Path(env).expanduser().resolve()
        if not _is_root(named):
            raise RepoNotFound(
                f"{ENV}={env} is not a {PROJECT} checkout (no pyproject.toml naming "
                f"{PROJECT!r} there); point it at the repository's top folder or unset it"
            )
        return named
    here = start.resolve()
    for folder in (here, *here.parents):
        if _is_root(folder):
            return folder
    raise RepoNotFound(
        f"{here} is not inside a {PROJECT} checkout (no pyproject.toml naming {PROJECT!r} "
        f"in it or above it): run from the repository (as `make` does), or set {ENV} "
        "to its top folder"
    )


@functools.cache
def root() -> Path:
    """The repository root for this process (``$ROUTER_CONTROLLER_REPO`` or the cwd's)."""
    return find(Path.cwd(), os.environ.get(ENV))
