"""The alert rules of config/prometheus, checked and exercised with Prometheus' promtool.

``promtool check rules`` parses every expression and template; ``promtool test rules``
replays series through the rules on Prometheus' own evaluator and shows the alerts a
user would get, with their labels and rendered text, and when.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_controller_dev import repo

REPO = repo.root()

PROMTOOL = shutil.which("promtool")
RULES = REPO / "config" / "prometheus" / "alert_rules.yaml"
JOB = "router-controller-controller-manager-metrics-service"
LEADER = f'leader_election_master_status{{job="{JOB}",name="27bc728d.vllm.ai"'

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool on PATH (Debian package: prometheus)"
)


def rule_groups() -> dict[str, Any]:
    (rule,) = [d for d in yaml.safe_load_all(RULES.read_text()) if d]
    assert rule["kind"] == "PrometheusRule"
    groups: dict[str, Any] = rule["spec"]
    return groups


def alert(name: str) -> dict[str, Any]:
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                found: dict[str, Any] = rule
                return found
    raise AssertionError(f"no alert {name}")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def write_rules(folder: Path) -> Path:
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups()))
    return path


def rendered(rule: dict[str, Any], **labels: str) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for these labels."""
    out = {}
    for key, text in rule["annotations"].items():
        for label, value in labels.items():
            text = text.replace(f"{{{{ $labels.{label} }}}}", value)
        assert "{{" not in text, f"{key} needs more than labels: {text}"
        out[key] = text
    return out


def test_promtool_check_rules_passes(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(write_rules(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in rule_groups()["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_a_staticroute_not_ready_for_15_minutes_fires_and_a_ready_one_does_not(
    tmp_path: Path,
) -> None:
    write_rules(tmp_path)
    ready = f'router_controller_staticroute_condition{{job="{JOB}",namespace="team-a",type="Ready"'
    not_ready = alert("StaticRouteNotReady")
    assert not_ready["for"] == "15m"
    cases = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # broken: not Ready from the start; fine: Ready throughout; flapping:
                    # not Ready for 10 minutes, then Ready (never long enough to page).
                    {"series": f'{ready},staticroute="broken",status="True"}}', "values": "0x30"},
                    {"series": f'{ready},staticroute="broken",status="False"}}', "values": "1x30"},
                    {"series": f'{ready},staticroute="fine",status="True"}}', "values": "1x30"},
                    {"series": f'{ready},staticroute="fine",status="False"}}', "values": "0x30"},
                    {
                        "series": f'{ready},staticroute="flapping",status="True"}}',
                        "values": "0x10 1x20",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "StaticRouteNotReady", "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": "StaticRouteNotReady",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "team-a",
                                    "staticroute": "broken",
                                },
                                "exp_annotations": rendered(
                                    not_ready, namespace="team-a", staticroute="broken"
                                ),
                            }
                        ],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'{LEADER},instance="a"}}',
                        "values": "1x5 0x20",
                    },
                    {
                        "series": f'{LEADER},instance="b"}}',
                        "values": "0x25",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "RouterControllerNoLeader", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "RouterControllerNoLeader",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "name": "27bc728d.vllm.ai"},
                                "exp_annotations": rendered(
                                    alert("RouterControllerNoLeader"), name="27bc728d.vllm.ai"
                                ),
                            }
                        ],
                    },
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(cases, width=10_000))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
