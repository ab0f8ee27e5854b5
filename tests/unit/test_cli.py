"""The command line: kubebuilder's flag names and defaults, Go-style values, exit code 2.

A Deployment written for the Go controller passes ``--leader-elect``,
``--metrics-bind-address=:8443`` and ``--health-probe-bind-address=:8081``; those and
the rest of kubebuilder's flags must parse the way Go's ``flag`` package parses them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from router_controller.cli import bind_address, duration, main, parser, settings_from
from router_controller.logs import encode_time
from router_controller.settings import Settings, parse_bind

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
    "--webhook-cert-path",
    "--webhook-cert-name",
    "--webhook-cert-key",
    "--zap-log-level",
    "--zap-encoder",
    "--zap-devel",
    "--zap-stacktrace-level",
    "--zap-time-encoding",
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


# --- every flag the Go controller binds: accepted, with its meaning -----------------
#
# kubebuilder's cmd/main.go binds the first eleven; controller-runtime binds --kubeconfig
# and, through zap.Options.BindFlags, the five zap flags. Go's flag package also takes
# them with one dash, and a value after a space for non-boolean flags.


def _field(settings: Settings, path: str) -> object:
    value: object = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


GO_FLAGS: list[tuple[list[str], str, object]] = [
    (["--metrics-bind-address=:8443"], "serving.metrics_bind_address", ":8443"),
    (["-metrics-bind-address=:8443"], "serving.metrics_bind_address", ":8443"),
    (["-metrics-bind-address", ":8080"], "serving.metrics_bind_address", ":8080"),
    (["--health-probe-bind-address=:9090"], "serving.health_probe_bind_address", ":9090"),
    (["-health-probe-bind-address=0"], "serving.health_probe_bind_address", "0"),
    (["--leader-elect"], "leader_election.enabled", True),
    (["-leader-elect"], "leader_election.enabled", True),
    (["-leader-elect=false"], "leader_election.enabled", False),
    (["--metrics-secure=false"], "serving.metrics_secure", False),
    (["-metrics-secure=F"], "serving.metrics_secure", False),
    (["--enable-http2"], "serving.enable_http2", True),
    (["-enable-http2=0"], "serving.enable_http2", False),
    (["--metrics-cert-path=/certs"], "serving.metrics_cert_path", "/certs"),
    (["-metrics-cert-name", "cert.pem"], "serving.metrics_cert_name", "cert.pem"),
    (["-metrics-cert-key=key.pem"], "serving.metrics_cert_key", "key.pem"),
    (["-kubeconfig", "/etc/k"], "kubeconfig", "/etc/k"),
    (["--webhook-cert-path=/w"], "serving.metrics_cert_path", None),
    (["-webhook-cert-name", "w.crt"], "serving.metrics_cert_name", "tls.crt"),
    (["--webhook-cert-key=w.key"], "serving.metrics_cert_key", "tls.key"),
    # zap: the value, and --zap-devel's defaults that explicit flags override.
    (["--zap-devel"], "logging", ("debug", "console", "zap", "warning")),
    (["-zap-devel=true"], "logging", ("debug", "console", "zap", "warning")),
    (["--zap-devel=false"], "logging", ("info", "json", "zap", "error")),
    (["--zap-devel", "--zap-log-level=info"], "logging", ("info", "console", "zap", "warning")),
    (["--zap-encoder=json", "--zap-devel"], "logging", ("debug", "json", "zap", "warning")),
    (["--zap-encoder=json"], "logging", ("info", "json", "zap", "error")),
    (["-zap-encoder", "CONSOLE"], "logging", ("info", "console", "zap", "error")),
    (["--log-format=console"], "logging", ("info", "console", "structlog", None)),
    ([], "logging", ("info", "json", "structlog", None)),
    (["--zap-log-level=debug"], "logging.level", "debug"),
    (["--zap-log-level=INFO"], "logging.level", "info"),
    (["-zap-log-level=error"], "logging.level", "error"),
    (["--zap-log-level=1"], "logging.level", "debug"),
    (["--zap-log-level=10"], "logging.level", "debug"),
    (["--zap-stacktrace-level=info"], "logging.stacktrace_level", "info"),
    (["--zap-stacktrace-level=ERROR"], "logging.stacktrace_level", "error"),
    (["-zap-stacktrace-level", "panic"], "logging.stacktrace_level", "panic"),
    *(
        ([f"--zap-time-encoding={name}"], "logging.time_encoding", name)
        for name in ("rfc3339nano", "rfc3339", "iso8601", "millis", "nanos", "epoch")
    ),
    (["--zap-time-encoding=RFC3339Nano"], "logging.time_encoding", "rfc3339nano"),
]


@pytest.mark.parametrize(("argv", "path", "expected"), GO_FLAGS, ids=lambda v: str(v))
def test_every_go_flag_parses_with_its_meaning(
    argv: list[str], path: str, expected: object
) -> None:
    settings = settings_from(argv)
    value = _field(settings, path)
    if path == "logging":
        log = settings.logging
        value = (log.level, log.format, log.keys, log.stacktrace_level)
    assert value == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--zap-log-level=0"],
        ["--zap-log-level=-1"],
        ["--zap-encoder=xml"],
        ["--zap-stacktrace-level=debug"],
        ["--zap-time-encoding=unix"],
        ["--zap-devel=maybe"],
    ],
)
def test_bad_zap_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from(argv)
    assert exited.value.code == 2
    assert "router-controller: error: argument --zap-" in capsys.readouterr().err


def test_a_double_dash_ends_the_flags_as_in_go() -> None:
    with pytest.raises(SystemExit):
        settings_from(["--", "-leader-elect"])  # a positional argument: refused


Main = Callable[..., tuple[int, list[str]]]


def _no_cluster(tmp_path: Path, *flags: str) -> tuple[int, list[str]]:
    """Run the operator with ``flags`` and no cluster: it logs and exits 1."""
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = subprocess.run(
        [sys.executable, "-m", "router_controller", f"--kubeconfig={tmp_path / 'absent'}", *flags],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stderr.splitlines()


@pytest.fixture
def run_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """``main(flags)`` in this process with no cluster; the log configuration is restored."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*flags: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = main([f"--kubeconfig={tmp_path / 'absent'}", *flags])
        return code, capsys.readouterr().err.splitlines()

    yield run
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


def _records(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def _record(lines: list[str], msg: str) -> dict[str, object]:
    for record in _records(lines):
        if msg in (record.get("msg"), record.get("event")):
            return record
    raise AssertionError(f"no record {msg!r} in {lines}")


def test_zap_json_has_zaps_field_names_and_layout(tmp_path: Path) -> None:
    code, lines = _no_cluster(tmp_path, "--zap-encoder=json", "-webhook-cert-path=/w")
    assert code == 1
    error = _record(lines, "no cluster")
    assert list(error) == ["level", "ts", "logger", "msg", "error", "stacktrace"]
    assert (error["level"], error["logger"]) == ("error", "main")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(error["ts"]))  # rfc3339
    raw = next(line for line in lines if '"no cluster"' in line)
    assert raw.startswith('{"level":"error","ts":"')  # zap's compact separators
    # The standard library's warnings are zap's "warn", from their own logger.
    assert any(
        r["level"] == "warn" and str(r["logger"]).startswith("kubernetes_asyncio")
        for r in _records(lines)
    )
    unused = _record(lines, "flag has no effect")
    assert (unused["level"], unused["flag"]) == ("info", "--webhook-cert-path")


def test_default_json_keeps_structlog_field_names(run_main: Main) -> None:
    code, lines = run_main()
    assert code == 1
    error = _record(lines, "no cluster")
    assert set(error) == {"event", "level", "logger", "timestamp", "error"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(error["timestamp"]))


def test_zap_devel_is_console_at_debug_with_stack_traces(run_main: Main) -> None:
    code, lines = run_main("--zap-devel")
    assert code == 1
    assert not _records(lines)
    text = "\n".join(lines)
    assert "settings" in text  # the debug record
    assert "no cluster" in text
    assert "Stack (most recent call last)" in text


@pytest.mark.parametrize(
    ("level", "debug", "info"),
    [("debug", True, True), ("info", False, True), ("error", False, False), ("3", True, True)],
)
def test_zap_log_level_filters(run_main: Main, level: str, debug: bool, info: bool) -> None:
    flags = ("--zap-devel=false", f"--zap-log-level={level}", "--webhook-cert-key=k")
    code, lines = run_main(*flags)
    assert code == 1
    messages = [r["msg"] for r in _records(lines) if r["logger"] == "main"]
    assert ("settings" in messages) is debug
    assert ("flag has no effect" in messages) is info
    assert "no cluster" in messages


@pytest.mark.parametrize(
    ("level", "on_info", "on_error"),
    [("info", True, True), ("error", False, True), ("panic", False, False)],
)
def test_zap_stacktrace_level(run_main: Main, level: str, on_info: bool, on_error: bool) -> None:
    flags = ("--zap-encoder=json", f"--zap-stacktrace-level={level}", "--webhook-cert-name=n")
    _, lines = run_main(*flags)
    assert ("stacktrace" in _record(lines, "flag has no effect")) is on_info
    assert ("stacktrace" in _record(lines, "no cluster")) is on_error


TIME_FORMATS = {
    "rfc3339": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
    "rfc3339nano": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z",
    "iso8601": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
}


@pytest.mark.parametrize(
    "encoding", ["rfc3339", "rfc3339nano", "iso8601", "epoch", "millis", "nanos"]
)
def test_zap_time_encoding(run_main: Main, encoding: str) -> None:
    _, lines = run_main("--zap-encoder=json", f"--zap-time-encoding={encoding}")
    ts = _record(lines, "no cluster")["ts"]
    now = time.time()
    if encoding in TIME_FORMATS:
        assert re.fullmatch(TIME_FORMATS[encoding], str(ts)), ts
    elif encoding == "nanos":
        assert isinstance(ts, int)
        assert abs(ts / 1e9 - now) < 600
    else:
        assert isinstance(ts, float)
        assert abs(ts / (1e3 if encoding == "millis" else 1) - now) < 600


def test_time_encodings_are_zaps() -> None:
    nanos = 1_700_000_000_123_456_789
    assert encode_time(nanos, "rfc3339") == "2023-11-14T22:13:20Z"
    assert encode_time(nanos, "rfc3339nano") == "2023-11-14T22:13:20.123456789Z"
    assert encode_time(1_700_000_000_120_000_000, "rfc3339nano") == "2023-11-14T22:13:20.12Z"
    assert encode_time(1_700_000_000_000_000_000, "rfc3339nano") == "2023-11-14T22:13:20Z"
    assert encode_time(nanos, "iso8601") == "2023-11-14T22:13:20.123Z"
    assert encode_time(nanos, "epoch") == pytest.approx(1_700_000_000.123456789)
    assert encode_time(nanos, "millis") == pytest.approx(1_700_000_000_123.456789)
    assert encode_time(nanos, "nanos") == nanos
    assert encode_time(nanos, None) == "2023-11-14T22:13:20.123457Z"


def test_flags_without_meaning_here_are_logged_not_refused(tmp_path: Path) -> None:
    flags = ("--webhook-cert-path=/w", "-webhook-cert-name=c", "--webhook-cert-key", "k")
    code, lines = _no_cluster(tmp_path, *flags, "--enable-http2")
    assert code == 1  # no cluster, never 2
    unused = {
        str(r["flag"]): str(r["reason"])
        for r in _records(lines)
        if r.get("event") == "flag has no effect"
    }
    assert unused == {
        "--webhook-cert-path": "this operator serves no webhooks",
        "--webhook-cert-name": "this operator serves no webhooks",
        "--webhook-cert-key": "this operator serves no webhooks",
        "--enable-http2": "the metrics endpoint serves HTTP/1.1 only",
    }


def test_help_says_which_flags_have_no_effect() -> None:
    text = " ".join(parser().format_help().split())
    assert text.count("serves no webhooks, so it has no effect (logged as unused)") == 3
    assert "HTTP/2 is never served, so true has no effect (logged as unused)" in text


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
def test_help_in_go_and_gnu_forms_exits_0(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from([flag])
    assert exited.value.code == 0
    assert "--zap-time-encoding" in capsys.readouterr().out


def test_help_names_the_offline_commands() -> None:
    text = " ".join(parser().format_help().split())
    assert "router-controller check -f FILE|DIR|-" in text
    assert "router-controller render -f FILE" in text


def test_flags_default_to_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each default is written once, in settings.py: no flag may carry another.
    monkeypatch.delenv("WATCH_NAMESPACES", raising=False)
    assert settings_from([]) == Settings()


def test_help_shows_the_defaults_the_operator_runs_with() -> None:
    text = " ".join(parser().format_help().split())
    assert "{default}" not in text
    for shown in (
        "reconcile workers (default 4)",
        "auth (default true)",
        "(default :8081); 0 disables",
        "Lease name (default 27bc728d.vllm.ai, the Go controller's)",
        "without renewal (default 15s)",
        "before giving up (default 10s)",
        "election attempts (default 2s)",
        "a quarter (default 128)",
        "after SIGTERM (default 15s)",
        "(logged as unused); default false",
        "Default info (debug with --zap-devel)",
    ):
        assert shown in text, shown
