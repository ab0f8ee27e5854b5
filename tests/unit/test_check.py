"""``router-controller check`` and ``render``, without a cluster.

The verdicts must be the API server's: every case of the CRD validation table in
tests/e2e/test_crd_validation.py (which the real API server judges in that file, and
tests/e2e/test_check.py compares side by side) is checked here too, from the same table.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_controller import api, routerconfig
from router_controller.check import CRD_FILE, Checker, check_main, packaged_crd, render_main
from router_controller.crdvalidation import RuleError, Validator
from router_controller_dev import repo
from tests.e2e.test_crd_validation import BACKENDS, INVALID, MODELS, VALID, Invalid, _route

REPO = repo.root()
CONFIG_CRD = REPO / "config" / "crd" / "bases" / CRD_FILE
PACKAGED_CRD = REPO / "operator" / "router_controller" / "crd" / CRD_FILE
FIELD_PREFIX = "spec."

Object = dict[str, Any]


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    main = check_main if argv[0] == "check" else render_main
    code = main(argv[1:], stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def route(name: str, spec: Object, namespace: str | None = None) -> Object:
    meta: Object = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta, "spec": spec}


def good_spec(**changes: Any) -> Object:
    spec: Object = {"staticBackends": BACKENDS, "staticModels": MODELS}
    spec.update(changes)
    return spec


# --- the CRD the check uses ---------------------------------------------------------


def test_the_packaged_crd_is_config_crd() -> None:
    """A symlink, so the CRD has one source; the wheel build copies the file it points to."""
    assert PACKAGED_CRD.is_symlink(), f"{PACKAGED_CRD.relative_to(REPO)} must be a symlink"
    assert PACKAGED_CRD.resolve() == CONFIG_CRD.resolve()
    assert PACKAGED_CRD.read_bytes() == CONFIG_CRD.read_bytes()


def test_the_crd_ships_as_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "crd/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["router_controller"]
    assert packaged_crd() == yaml.safe_load(CONFIG_CRD.read_text())


def _rules(schema: Object) -> int:
    count = len(schema.get("x-kubernetes-validations", []))
    for sub in schema.get("properties", {}).values():
        count += _rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            count += _rules(schema[key])
    return count


def test_every_cel_rule_of_the_crd_compiles_here() -> None:
    crd = packaged_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _rules(schema) > 10
    assert Checker(crd).rule_count == _rules(schema)


def test_a_rule_the_check_cannot_evaluate_stops_it_with_exit_2(tmp_path: Path) -> None:
    crd = packaged_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"].append({"rule": "self.staticModels.noSuchFunction()"})
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(crd))
    code, _, err = run(["check", "--crd", str(path), "-f", "-"], json.dumps(route("a", {})))
    assert code == 2
    assert "cannot evaluate" in err
    assert "noSuchFunction" in err


# --- one shared table: the API server's verdicts ------------------------------------


def _fields(case: Invalid) -> set[str]:
    """The fields the API server's message names (``spec.x`` before a colon or a quote)."""
    fields = set()
    for fragment in case.fragments:
        for word in fragment.replace('"', " ").split():
            word = word.rstrip(":")
            if word.startswith(FIELD_PREFIX):
                fields.add(word)
    return fields


@pytest.mark.parametrize("case", INVALID, ids=[case.id for case in INVALID])
def test_what_the_api_server_refuses_is_invalid(case: Invalid) -> None:
    code, out, _ = run(["check", "-f", "-"], _route(case.name, case.spec))
    assert code == 1, f"check passed {case.spec}"
    for field in _fields(case):
        assert f": {field}" in out, f"{field} not named in:\n{out}"


@pytest.mark.parametrize("name", list(VALID))
def test_what_the_api_server_accepts_is_valid(name: str) -> None:
    code, out, err = run(["check", "-f", "-"], _route(name, VALID[name]))
    assert (code, out) == (0, ""), out
    assert "1 StaticRoute checked, 0 invalid" in err


# --- inputs -------------------------------------------------------------------------


def test_the_samples_pass() -> None:
    code, out, err = run(["check", "-f", str(REPO / "config" / "samples")])
    assert (code, out) == (0, "")
    assert "1 StaticRoute checked, 0 invalid" in err


def test_several_invalid_staticroutes_each_field_named(tmp_path: Path) -> None:
    docs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}},
        route("ok", good_spec(), "team-a"),
        route("counts", good_spec(staticModels="only-one"), "team-a"),
        route("session", good_spec(routingLogic="session"), "team-b"),
        route("period", good_spec(healthCheck={"periodSeconds": 0}), "team-b"),
        route("Upper_Case", good_spec(), "team-b"),
    ]
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    code, out, err = run(["check", "-f", str(path)])
    assert code == 1
    lines = out.splitlines()
    expected = {
        "team-a/counts": "spec.staticModels: Invalid value",
        "team-b/session": "spec.sessionKey: Required value",
        "team-b/period": "spec.healthCheck.periodSeconds: Invalid value: 0",
        "team-b/Upper_Case": "metadata.name: Invalid value",
    }
    for ref, problem in expected.items():
        assert any(
            line.startswith(f"{path}:") and f"StaticRoute {ref}: {problem}" in line
            for line in lines
        ), f"{ref}: {problem} not in:\n{out}"
    assert not any("team-a/ok" in line or "other" in line for line in lines)
    assert "5 StaticRoutes checked, 4 invalid" in err


def test_problems_carry_the_documents_line(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(
        "# a comment\n"
        "apiVersion: production-stack.vllm.ai/v1alpha1\n"
        "kind: StaticRoute\n"
        "metadata: {name: first}\n"
        f"spec: {{staticBackends: '{BACKENDS}', staticModels: '{MODELS}'}}\n"
        "---\n"
        "apiVersion: production-stack.vllm.ai/v1alpha1\n"
        "kind: StaticRoute\n"
        "metadata: {name: second, namespace: ns}\n"
        "spec: {staticBackends: 'http://my-svc:8000', staticModels: m}\n"
    )
    code, out, _ = run(["check", "-f", str(path)])
    assert code == 1
    assert out.startswith(f"{path}:7: StaticRoute ns/second: spec.staticBackends: ")


def test_kustomize_output_on_stdin() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "config" / "samples")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    code, out, err = run(["check", "-f", "-"], rendered)
    assert (code, out) == (0, "")
    assert "1 StaticRoute checked" in err


def test_json_list_and_staticroutelist() -> None:
    bad = route("bad", good_spec(staticModels="m1,,m2"), "x")
    plain_list = {"apiVersion": "v1", "kind": "List", "items": [route("a", good_spec()), bad]}
    items = [{k: v for k, v in bad.items() if k not in ("apiVersion", "kind")}]
    typed_list = {"apiVersion": api.API_VERSION, "kind": f"{api.KIND}List", "items": items}
    text = json.dumps(plain_list, indent=1) + "\n" + json.dumps(typed_list)
    code, out, err = run(["check", "-f", "-"], text)
    assert code == 1
    assert "-:1: StaticRoute x/bad (items[1]): spec.staticModels" in out
    assert "StaticRoute x/bad (items[0]): spec.staticModels" in out
    assert "3 StaticRoutes checked, 2 invalid" in err


def test_a_directory_and_recursion(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(route("a", good_spec())))
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "nested" / "b.json").write_text(json.dumps(route("b", {"staticModels": "m"})))
    assert run(["check", "-f", str(tmp_path)])[0] == 0
    code, out, _ = run(["check", "-R", "-f", str(tmp_path)])
    assert code == 1
    assert "b.json:1: StaticRoute b: spec.staticBackends: Required value" in out


def test_unreadable_inputs(tmp_path: Path) -> None:
    code, _, err = run(["check", "-f", str(tmp_path / "absent.yaml")])
    assert code == 2
    assert "does not exist" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: [unclosed\n")
    code, out, _ = run(["check", "-f", str(broken)])
    assert code == 1
    assert f"{broken}:" in out
    assert "not valid YAML" in out


def test_wrong_version_or_kind_of_our_group() -> None:
    docs = [
        {**route("a", good_spec()), "apiVersion": f"{api.GROUP}/v1"},
        {**route("b", good_spec()), "kind": "StaticRoutes"},
    ]
    code, out, _ = run(["check", "-f", "-"], yaml.safe_dump_all(docs))
    assert code == 1
    assert f"apiVersion: '{api.GROUP}/v1' is not served; use {api.API_VERSION}" in out
    assert "has no kind 'StaticRoutes'" in out


def test_unknown_fields_and_missing_name() -> None:
    obj = route("", good_spec(staticBackend="typo"))
    obj["extra"] = 1
    code, out, _ = run(["check", "-f", "-"], json.dumps(obj))
    assert code == 1
    assert 'spec.staticBackend: unknown field "spec.staticBackend"' in out
    assert 'extra: unknown field "extra"' in out
    assert "metadata.name: Required value" in out


# --- the operator's own rules -------------------------------------------------------


def test_operator_rules_apply_after_the_crds(tmp_path: Path) -> None:
    """A CRD without CEL rules (an older one) lets more through; the operator's rules don't."""
    crd = packaged_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema.pop("x-kubernetes-validations", None)
    schema["properties"]["spec"].pop("x-kubernetes-validations")
    path = tmp_path / "old-crd.yaml"
    path.write_text(yaml.safe_dump(crd))
    obj = route(
        "r", good_spec(staticBackends="http://my-svc:8000,http://a.b.com", staticModels="m")
    )
    code, out, _ = run(["check", "--crd", str(path), "-f", "-"], json.dumps(obj))
    assert code == 1
    assert "spec.staticBackends: 'http://my-svc:8000' is not a URL the router accepts" in out
    assert "spec.staticBackends has 2 URLs but spec.staticModels has 1 models" in out


def test_a_cross_namespace_router_ref_is_a_warning() -> None:
    ref = {"kind": "Service", "apiVersion": "v1", "name": "r", "namespace": "elsewhere"}
    obj = route("r", good_spec(routerRef=ref), "mine")
    code, out, _ = run(["check", "-f", "-"], json.dumps(obj))
    assert code == 0
    assert "warning: spec.routerRef points to namespace elsewhere" in out


# --- render -------------------------------------------------------------------------


def test_render_prints_the_operators_bytes() -> None:
    spec = good_spec(staticBackends=" http://a.example.com:8000 , http://b.example.com ")
    code, out, err = run(["render", "-f", "-"], yaml.safe_dump(route("r", spec)))
    assert (code, err) == (0, "")
    # The CRD's defaults are applied first, as the API server stores the object.
    defaulted = {"serviceDiscovery": "static", "routingLogic": "roundrobin", **spec}
    expected = routerconfig.render(api.StaticRouteSpec.model_validate(defaulted)).data
    assert out == expected
    assert json.loads(out)["static_backends"] == "http://a.example.com:8000,http://b.example.com"


def test_render_writes_utf8_bytes_to_a_binary_stdout() -> None:
    spec = good_spec(staticModels="modèle-1,模型-2")
    binary = io.BytesIO()
    out = io.TextIOWrapper(binary, encoding="ascii")
    code = render_main(
        ["-f", "-"], stdin=io.StringIO(json.dumps(route("r", spec))), stdout=out,
        stderr=io.StringIO(),
    )  # fmt: skip
    assert code == 0
    assert json.loads(binary.getvalue().decode("utf-8"))["static_models"] == "modèle-1,模型-2"


def test_render_uses_the_namespace_for_k8s_discovery() -> None:
    obj = route("r", {"serviceDiscovery": "k8s", "k8sPort": 8000})
    code, out, _ = run(["render", "-n", "team-a", "-f", "-"], json.dumps(obj))
    assert code == 0
    assert json.loads(out)["k8s_namespace"] == "team-a"


def test_render_refuses_an_invalid_staticroute() -> None:
    code, out, err = run(["render", "-f", "-"], json.dumps(route("r", {"staticModels": "m"})))
    assert (code, out) == (1, "")
    assert "spec.staticBackends: Required value" in err


def test_render_picks_one_staticroute() -> None:
    text = yaml.safe_dump_all([route("a", good_spec()), route("b", good_spec(), "ns")])
    code, out, err = run(["render", "-f", "-"], text)
    assert (code, out) == (2, "")
    assert "found 2 (a, ns/b); pick one with --name" in err
    code, out, _ = run(["render", "--name", "b", "-f", "-"], text)
    assert code == 0
    assert json.loads(out)["routing_logic"] == "roundrobin"


def test_the_commands_run_from_the_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router_controller", "check", "-f", str(REPO / "config/samples")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1 StaticRoute checked, 0 invalid" in result.stderr


# --- the schema walker on its own ---------------------------------------------------


def _validator(spec_schema: Object) -> Validator:
    return Validator(
        {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": spec_schema,
            },
        }
    )


def test_message_expressions_transition_rules_and_list_types() -> None:
    validator = _validator(
        {
            "type": "object",
            "properties": {
                "replicas": {"type": "integer", "default": 1},
                "port": {"x-kubernetes-int-or-string": True},
                "items": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                },
            },
            "x-kubernetes-validations": [
                {
                    "rule": "self.replicas < 3",
                    "messageExpression": "'replicas is ' + string(self.replicas)",
                },
                {"rule": "self.replicas == oldSelf.replicas", "message": "immutable"},
                {"rule": "self.replicas > 0", "message": "never shown"},
            ],
        }
    )
    obj = {"spec": {"replicas": 5, "port": "http", "items": [{"name": "a"}, {"name": "a"}]}}
    stored, errors = validator.validate(obj)
    messages = [str(e) for e in errors]
    assert 'spec: Invalid value: "object": replicas is 5' in messages
    assert 'spec.items[1]: Duplicate value: {"name": "a"}' in messages
    assert not any("immutable" in m or "never shown" in m for m in messages)
    stored, errors = validator.validate({"spec": {"port": 8080}})
    assert (stored["spec"]["replicas"], errors) == (1, [])
    assert obj["spec"]["replicas"] == 5  # the input is never changed


def test_type_errors_skip_the_cel_rules_as_the_api_server_does() -> None:
    validator = _validator(
        {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.n > 0", "message": "n must be positive"}],
        }
    )
    _, errors = validator.validate({"spec": {"n": "five"}})
    messages = [str(e) for e in errors]
    assert (
        messages[0]
        == 'spec.n: Invalid value: "string": spec.n in body must be of type integer: "string"'
    )
    assert "some validation rules were not checked" in messages[1]
    assert not any("positive" in m for m in messages)


def test_patterns_use_re2() -> None:
    # RE2 has no lookahead; Go's regexp would refuse the CRD, and so does the check.
    validator = _validator(
        {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a(?=b)"}}}
    )
    _, errors = validator.validate({"spec": {"s": "ab"}})
    assert errors
    assert "should match" in str(errors[0])


def test_a_broken_rule_is_reported_with_its_place() -> None:
    with pytest.raises(RuleError, match=r"spec .*'self\.x \+'"):
        _validator({"type": "object", "x-kubernetes-validations": [{"rule": "self.x +"}]})


def test_the_table_is_not_changed_by_checking() -> None:
    before = copy.deepcopy(INVALID)
    for case in INVALID:
        run(["check", "-f", "-"], _route(case.name, case.spec))
    assert before == INVALID


def test_objectmeta_rules() -> None:
    obj = route("r", good_spec(), "Bad_Namespace")
    obj["metadata"]["labels"] = {"app": "has space", "bad key!": "x", "ok/x": "1", "n": 5}
    obj["metadata"]["annotations"] = {"example.com/a": "x" * (256 * 1024)}
    obj["metadata"]["lables"] = {}
    code, out, _ = run(["check", "-f", "-"], json.dumps(obj))
    assert code == 1
    for expected in (
        'metadata.namespace: Invalid value: "Bad_Namespace": a lowercase RFC 1123 label',
        'metadata.labels: Invalid value: "has space": a valid label must be an empty string',
        'metadata.labels: Invalid value: "bad key!": name part must consist of',
        "metadata.labels[n]: Invalid value: 5: must be a string",
        "metadata.annotations: Too long: must have at most 262144 bytes",
        'metadata.lables: unknown field "metadata.lables"',
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert "ok/x" not in out


def test_objects_of_other_groups_named_staticroute_are_skipped() -> None:
    other = {**route("r", {"anything": 1}), "apiVersion": "example.com/v1"}
    code, _, err = run(["check", "-f", "-"], json.dumps(other))
    assert code == 0
    assert "0 StaticRoutes checked, 0 invalid (no StaticRoute in the input" in err


def test_junctions_validate_values() -> None:
    # As in JSON Schema, a constraint for another type (pattern on a number) holds.
    port = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"maximum": 100}, {"minimum": 1000}],
        "not": {"enum": ["forbidden"]},
    }
    validator = _validator({"type": "object", "properties": {"port": port}})
    for good in (80, 8000, "http"):
        assert validator.validate({"spec": {"port": good}})[1] == []
    [error] = validator.validate({"spec": {"port": 500}})[1]
    assert str(error) == "spec.port: Invalid value: must validate at least one schema (anyOf)"
    [error] = validator.validate({"spec": {"port": "forbidden"}})[1]
    assert str(error) == "spec.port: Invalid value: must not validate the schema (not)"
