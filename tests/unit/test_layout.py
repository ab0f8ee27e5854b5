"""The source root ``operator/`` must never shadow the standard library's ``operator``."""

from __future__ import annotations

import importlib
import operator
import subprocess
import sys


def test_router_controller_and_stdlib_operator_both_import() -> None:
    package = importlib.import_module("router_controller")
    assert package.__version__
    # The standard module, not the folder of the same name.
    assert operator.add(2, 3) == 5
    assert hasattr(operator, "itemgetter")
    assert "site-packages" not in (operator.__file__ or "")


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router_controller", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("router-controller ")
