"""dist/chart is what hack/helm_chart.py makes of config/: a change to config/ without
``make helm-chart`` (or a hand edit of the chart) fails here, naming the files."""

from __future__ import annotations

import subprocess
import sys

from router_controller_dev import repo

REPO = repo.root()


def test_the_tracked_chart_is_generated_from_config() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "helm_chart.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_chart_is_tracked_by_git() -> None:
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "-q", "dist/chart/values.yaml"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert ignored.returncode == 1, "dist/chart must not be ignored: it is the chart users install"
