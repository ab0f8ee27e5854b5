"""The command line: kubebuilder's flag names and defaults, Go-style values, exit code 2.

A Deployment written for the Go controller passes ``--leader-elect``,
``--metrics-bind-address=:8443`` and ``--health-probe-bind-address=:8081``; those and
the rest of kubebuilder's flags must parse the way Go's ``flag`` package parses them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router_controller.cli import bind_address, duration, main, settings_from
from router_controller.settings import parse_bind

# kubebuilder's main.go and zap's flags, and ours.
KUBEBUILDER_FLAGS = (
    "--metrics-bind-address",
    "--health-probe-bind-address",
    "--leader-elect",
    "--metrics-secure",
    "--enable-http2",
    "--metrics-cert-path",
    "--metrics-cert-name",
    "--metrics-cert-key",
    "--kubeconfig",
    "--zap-log-level",
    "--zap-encoder",
    "--zap-devel",
)
OUR_FLAGS = (
    "--namespaces",
    "--max-concurrent-reconciles",
    "--leader-election-id",
    "--leader-election-namespace",
    "--leader-elect-lease-duration",
    "--leader-elect-renew-deadline",
    "--leader-elect-retry-period",
    "--allow-cross-namespace-router-ref",
    "--probe-concurrency",
    "--shutdown-timeout",
)


def test_help_lists_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router_controller", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in (*KUBEBUILDER_FLAGS, *OUR_FLAGS):
        assert flag in result.stdout, f"{flag} missing from --help"


def test_defaults_are_kubebuilders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCH_NAMESPACES", raising=False)
    settings = settings_from([])
    assert settings.serving.metrics_bind_address == "0"
    assert settings.serving.metrics_secure is True
    assert settings.serving.health_probe_bind_address == ":8081"
    assert settings.serving.enable_http2 is False
    assert settings.leader_election.enabled is False
    assert settings.leader_election.lease_name == "27bc728d.vllm.ai"
    assert (
        settings.leader_election.lease_duration,
        settings.leader_election.renew_deadline,
        settings.leader_election.retry_period,
    ) == (15.0, 10.0, 2.0)
    assert settings.namespaces == ()


def test_the_manifests_arguments_parse() -> None:
    settings = settings_from(
        ["--leader-elect", "--health-probe-bind-address=:8081", "--metrics-bind-address=:8443"]
    )
    assert settings.leader_election.enabled is True
    assert settings.serving.metrics_bind_address == ":8443"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--metrics-secure"], True),
        (["--metrics-secure=false"], False),
        (["--metrics-secure=0"], False),
        (["--metrics-secure=True"], True),
    ],
)
def test_boolean_flags_take_go_forms(argv: list[str], expected: bool) -> None:
    assert settings_from(argv).serving.metrics_secure is expected


def test_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCH_NAMESPACES", "from-env")
    settings = settings_from(
        [
            "--namespaces= a, b ,",
            "--leader-elect=true",
            "--leader-election-id=my-lease",
            "--leader-election-namespace=ops",
            "--leader-elect-lease-duration=1m",
            "--leader-elect-renew-deadline=45s",
            "--leader-elect-retry-period=2500ms",
            "--shutdown-timeout=1m30s",
            "--enable-http2",
            "--metrics-cert-path=/certs",
            "--zap-log-level=debug",
            "--zap-encoder=console",
        ]
    )
    assert settings.namespaces == ("a", "b")
    election = settings.leader_election
    assert (election.enabled, election.lease_name, election.lease_namespace) == (
        True,
        "my-lease",
        "ops",
    )
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (
        60.0,
        45.0,
        2.5,
    )
    assert settings.shutdown_timeout == 90.0
    assert settings.serving.enable_http2 is True
    assert settings.serving.metrics_cert_path == "/certs"
    assert (settings.logging.level, settings.logging.format) == ("debug", "console")


def test_namespaces_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCH_NAMESPACES", "x,y")
    assert settings_from([]).namespaces == ("x", "y")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("7", 7.0),
        ("0.25", 0.25),
    ],
)
def test_durations_are_go_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "15x", "15 s", "-1s", "1m-5s", "nan", "inf", "-3"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        (":8443", (None, 8443)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:9000", ("localhost", 9000)),
        ("0", None),
        ("", None),
    ],
)
def test_bind_addresses_parse_like_go(address: str, parsed: tuple[str | None, int] | None) -> None:
    assert parse_bind(address) == parsed
    assert bind_address(address) == address


@pytest.mark.parametrize("address", ["8080", "localhost", ":http", ":70000", "host:"])
def test_bad_bind_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind(address)


@pytest.mark.parametrize(
    "argv",
    [
        ["--metrics-bind-address=8443"],
        ["--leader-elect-lease-duration=soon"],
        ["--metrics-secure=maybe"],
        ["--zap-log-level=loud"],
        ["--no-such-flag"],
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from(argv)
    assert exited.value.code == 2
    assert "router-controller: error:" in capsys.readouterr().err


def test_inconsistent_election_timings_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--leader-elect", "--leader-elect-renew-deadline=20s"])
    assert code == 2
    assert "renew deadline < lease duration" in capsys.readouterr().err


def test_missing_cluster_config_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = subprocess.run(
        [sys.executable, "-m", "router_controller", "--kubeconfig", str(tmp_path / "absent")],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot load a cluster configuration" in result.stderr
    assert "--kubeconfig=PATH" in result.stderr
    assert "Traceback" not in result.stderr
