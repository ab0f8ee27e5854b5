"""The container image, checked without a container engine.

No Docker engine runs here, so the Dockerfile is parsed and its promises checked:
non-root uid 65532, the operator as an exec-form ENTRYPOINT (the Deployment passes
only ``args``), dependencies installed at the versions of ``constraints.txt``, and
those pins covering every runtime dependency, at the versions this venv runs.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from importlib import metadata

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from router_controller import cli
from router_controller_dev import repo

REPO = repo.root()


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The Dockerfile's instructions, grouped by build stage (each FROM starts one)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args(stage_zero_prelude: str) -> dict[str, str]:
    found = {}
    for line in stage_zero_prelude.splitlines():
        match = re.match(r"^ARG\s+(\w+)=(\S+)", line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


DOCKERFILE = (REPO / "Dockerfile").read_text()
STAGES = parse_dockerfile(DOCKERFILE)
FINAL = STAGES[-1]


def _only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in stage if i.keyword == keyword]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_multi_stage_on_a_slim_python_3_11_base() -> None:
    assert len(STAGES) >= 2
    base_args = _args(DOCKERFILE)
    for stage in STAGES:
        image = stage[0].value.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: base_args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image


def test_runs_as_uid_65532() -> None:
    users = _only(FINAL, "USER")
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1].value.split(":")[0] == "65532"
    assert users[-1].value.split(":")[-1] == "65532"


def test_entrypoint_is_the_operator_in_exec_form() -> None:
    entrypoints = _only(FINAL, "ENTRYPOINT")
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0].value)  # exec form: a JSON list, no shell
    assert isinstance(command, list)
    assert command[-1].endswith("/router-controller") or command[-2:] == [
        "-m",
        "router_controller",
    ], command
    assert not _only(FINAL, "CMD"), "a CMD would add arguments the Deployment did not ask for"
    for run in _only(FINAL, "RUN"):
        raise AssertionError(f"the final stage runs a shell at build time: {run.value}")


def test_dependencies_are_installed_from_the_constraints() -> None:
    installs = [
        i.value for stage in STAGES for i in _only(stage, "RUN") if "pip install" in i.value
    ]
    assert installs
    for command in installs:
        assert re.search(r"(-c|--constraint)\s+constraints\.txt", command), command
    copied = " ".join(i.value for stage in STAGES[:-1] for i in _only(stage, "COPY"))
    assert "constraints.txt" in copied


def test_only_the_needed_files_reach_the_build() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, ".dockerignore should exclude everything not listed"
    for stage in STAGES:
        for copy in _only(stage, "COPY"):
            if copy.value.startswith("--from"):
                continue
            *sources, _dest = copy.value.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert f"!{source}" in ignore or f"!{source.rstrip('/')}" in ignore, source


def test_the_deployment_passes_only_args_the_operator_accepts() -> None:
    docs = list(yaml.safe_load_all((REPO / "config" / "manager" / "manager.yaml").read_text()))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "command" not in container, "command would replace the image's ENTRYPOINT"
    settings = cli.settings_from(container["args"])
    assert settings.leader_election.enabled
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 65532
    # A read-only root: the self-signed metrics certificate is written under /tmp.
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts


def test_constraints_pin_every_runtime_dependency_and_what_they_need() -> None:
    pins = _pins()
    missing: list[str] = []
    seen: set[str] = set()
    todo = list(_runtime_requirements())
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        if name not in pins:
            missing.append(str(requirement))
            continue
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}"
        )
        todo.extend(Requirement(r) for r in metadata.requires(requirement.name) or [])
    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_the_venv_runs_the_pinned_versions() -> None:
    wrong = {}
    for name, pinned in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong[name] = (pinned, "not installed")
            continue
        if Version(installed) != Version(pinned):
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from constraints.txt (pinned, installed): {wrong}"
