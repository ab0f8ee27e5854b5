"""The StaticRoute CRD and the pydantic models in ``router_controller.api`` describe one API.

The CRD is written by hand, so nothing but this test keeps it in step with the
models the operator parses objects into. Every property of the models must appear in
the CRD with the same type, default, bounds and enum, the CRD must have no property
the models lack, and the backend URL expression in the CRD's CEL rules must be the
router's own (``routerconfig.ROUTER_URL_RE``). No API server is involved; the rules
themselves are exercised against a real one in ``tests/e2e/test_crd_validation.py``.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from router_controller import api, routerconfig
from router_controller.api import default_config_map_name
from router_controller.routerconfig import CONFIG_MAP_NAME_MAX
from router_controller_dev import repo

REPO = repo.root()
CRD_PATH = REPO / "config" / "crd" / "bases" / "production-stack.vllm.ai_staticroutes.yaml"
SAMPLE_PATH = REPO / "config" / "samples" / "production-stack_v1alpha1_staticroute.yaml"

# Constraints the CRD carries beyond the models, on purpose: the standard
# metav1.Condition schema, which the API server enforces for every operator alike.
STANDARD_EXTRAS: dict[str, set[str]] = {
    "status.conditions[].observedGeneration": {"minimum"},
}

Schema = dict[str, Any]
INT_OR_STRING = int | str


def _load_yaml(path: Path) -> Schema:
    with path.open(encoding="utf-8") as stream:
        document = yaml.safe_load(stream)
    assert isinstance(document, dict), f"{path} does not hold one YAML mapping"
    return document


@pytest.fixture(scope="module")
def crd() -> Schema:
    return _load_yaml(CRD_PATH)


@pytest.fixture(scope="module")
def version(crd: Schema) -> Schema:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == [api.VERSION]
    result: Schema = versions[0]
    return result


@pytest.fixture(scope="module")
def schema(version: Schema) -> Schema:
    result: Schema = version["schema"]["openAPIV3Schema"]
    return result


@pytest.fixture(scope="module")
def spec_schema(schema: Schema) -> Schema:
    result: Schema = schema["properties"]["spec"]
    return result


@pytest.fixture(scope="module")
def rules(spec_schema: Schema) -> list[Schema]:
    result: list[Schema] = spec_schema["x-kubernetes-validations"]
    return result


# --- walking the models -------------------------------------------------------------


def _strip_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if set(args) == {int, str}:
            return INT_OR_STRING
        assert len(args) == 1, f"unsupported union {annotation!r}"
        return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _check_type(annotation: Any, prop: Schema, path: str) -> None:
    """The CRD property ``prop`` has the shape of the Python type ``annotation``."""
    annotation = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation == INT_OR_STRING:  # as Kubernetes' IntOrString
        assert prop.get("x-kubernetes-int-or-string") is True, path
        assert {a.get("type") for a in prop.get("anyOf", [])} == {"integer", "string"}, path
        return
    if origin is Literal:
        assert prop.get("type") == "string", path
        assert prop.get("enum") == list(typing.get_args(annotation)), f"{path}: enum"
    elif annotation is str:
        assert prop.get("type") == "string", path
        assert "enum" not in prop, f"{path}: the model allows any string"
    elif annotation is bool:
        assert prop.get("type") == "boolean", path
    elif annotation is int:
        assert prop.get("type") == "integer", path
    elif _is_model(annotation):
        assert prop.get("type") == "object", path
        _check_model(annotation, prop, path)
    elif origin is list:
        (item,) = typing.get_args(annotation)
        assert prop.get("type") == "array", path
        _check_type(item, prop["items"], f"{path}[]")
    elif origin is dict:
        key, value = typing.get_args(annotation)
        assert key is str, path
        assert prop.get("type") == "object", path
        assert "properties" not in prop, path
        _check_type(value, prop["additionalProperties"], f"{path}{{}}")
    else:
        pytest.fail(f"{path}: no CRD mapping for the Python type {annotation!r}")


def _bound(field: FieldInfo, kind: type[Any], attribute: str) -> Any:
    for constraint in field.metadata:
        if isinstance(constraint, kind):
            return getattr(constraint, attribute)
    return None


def _check_field(field: FieldInfo, prop: Schema, path: str) -> None:
    _check_type(field.annotation, prop, path)

    if field.default is PydanticUndefined or field.default is None:
        assert "default" not in prop, f"{path}: the model has no default"
    else:
        assert prop.get("default") == field.default, f"{path}: default"

    extras = STANDARD_EXTRAS.get(path, set())
    for keyword, kind, attribute in (
        ("minimum", annotated_types.Ge, "ge"),
        ("maximum", annotated_types.Le, "le"),
    ):
        if keyword in extras:
            continue
        assert prop.get(keyword) == _bound(field, kind, attribute), f"{path}: {keyword}"
    # Strict bounds are not used on either side; map them here before using them.
    assert "exclusiveMinimum" not in prop, path
    assert "exclusiveMaximum" not in prop, path
    assert _bound(field, annotated_types.Gt, "gt") is None, path
    assert _bound(field, annotated_types.Lt, "lt") is None, path


def _check_model(model: type[BaseModel], prop: Schema, path: str) -> None:
    """Same properties, same required set, and every field matching."""
    fields = {(field.alias or name): field for name, field in model.model_fields.items()}
    properties: Schema = prop.get("properties", {})
    assert sorted(properties) == sorted(fields), (
        f"{path or '(root)'}: CRD properties differ from {model.__name__}: "
        f"only in the CRD {sorted(set(properties) - set(fields))}, "
        f"only in the model {sorted(set(fields) - set(properties))}"
    )
    required = sorted(alias for alias, field in fields.items() if field.is_required())
    assert sorted(prop.get("required", [])) == required, f"{path}: required"
    for alias, field in fields.items():
        _check_field(field, properties[alias], f"{path}.{alias}" if path else alias)


def _walk(prop: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, prop
    for name, child in prop.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in prop:
        yield from _walk(prop["items"], f"{path}[]")
    if isinstance(prop.get("additionalProperties"), dict):
        yield from _walk(prop["additionalProperties"], f"{path}{{}}")


# --- the CRD's identity -------------------------------------------------------------


def test_crd_names_and_scope(crd: Schema, version: Schema) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == api.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": api.KIND,
        "listKind": f"{api.KIND}List",
        "plural": api.PLURAL,
        "singular": "staticroute",
        "shortNames": ["sr"],
        "categories": ["vllm"],
    }
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: Schema) -> None:
    columns = {c["name"]: (c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Routing": (".spec.routingLogic", "string"),
        "ConfigMap": (".status.configMapRef", "string"),
        "Ready": ('.status.conditions[?(@.type=="Ready")].status', "string"),
        "Healthy": ('.status.conditions[?(@.type=="RouterHealthy")].status', "string"),
        "Synced": ('.status.conditions[?(@.type=="RouterConfigSynced")].status', "string"),
        "Message": ('.status.conditions[?(@.type=="Ready")].message', "string"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    # Health and sync sit next to Ready; the message only in `-o wide`, as kubectl keeps
    # the default view narrow; Age last, by kubectl's output conventions.
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Routing", "ConfigMap", "Ready", "Healthy", "Synced", "Age"]


# --- the schema against the models --------------------------------------------------


def test_top_level_properties(schema: Schema) -> None:
    assert sorted(schema["properties"]) == ["apiVersion", "kind", "metadata", "spec", "status"]


def test_spec_matches_model(spec_schema: Schema) -> None:
    _check_model(api.StaticRouteSpec, spec_schema, "spec")


def test_status_matches_model(schema: Schema) -> None:
    _check_model(api.StaticRouteStatus, schema["properties"]["status"], "status")


def test_spec_enums_come_from_the_models(spec_schema: Schema) -> None:
    properties = spec_schema["properties"]
    assert properties["serviceDiscovery"]["enum"] == list(typing.get_args(api.ServiceDiscovery))
    assert properties["routingLogic"]["enum"] == list(typing.get_args(api.RoutingLogic))


def test_health_check_defaults(spec_schema: Schema) -> None:
    health = spec_schema["properties"]["healthCheck"]["properties"]
    assert {name: (p["default"], p["minimum"]) for name, p in health.items()} == {
        "timeoutSeconds": (5, 1),
        "periodSeconds": (10, 1),
        "successThreshold": (1, 1),
        "failureThreshold": (3, 1),
    }


def test_selectors_and_references_are_atomic(spec_schema: Schema) -> None:
    properties = spec_schema["properties"]
    assert properties["routerRef"]["x-kubernetes-map-type"] == "atomic"
    selector = properties["routerSelector"]
    assert selector["x-kubernetes-map-type"] == "atomic"
    expressions = selector["properties"]["matchExpressions"]
    assert expressions["x-kubernetes-list-type"] == "atomic"
    assert expressions["items"]["properties"]["values"]["x-kubernetes-list-type"] == "atomic"


def test_conditions_are_a_list_map_keyed_by_type(schema: Schema) -> None:
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]["properties"]
    assert item["status"]["enum"] == ["True", "False", "Unknown"]
    assert re.fullmatch(item["reason"]["pattern"], "ConfigMapConflict")
    assert re.fullmatch(item["type"]["pattern"], "RouterConfigSynced")


def test_times_are_date_time_and_generations_int64(schema: Schema) -> None:
    found = 0
    for path, prop in _walk(schema, ""):
        name = path.rsplit(".", 1)[-1]
        if name.endswith("Time"):
            assert prop.get("format") == "date-time", path
            found += 1
        if name == "observedGeneration":
            assert prop.get("format") == "int64", path
            found += 1
    assert found == 5


def test_every_free_string_is_bounded(schema: Schema) -> None:
    """Without maxLength the API server's CEL cost estimate refuses the rules."""
    unbounded = [
        path
        for path, prop in _walk(schema["properties"]["spec"], "spec")
        if prop.get("type") == "string" and "enum" not in prop and "maxLength" not in prop
    ]
    unbounded += [
        path
        for path, prop in _walk(schema["properties"]["status"], "status")
        if prop.get("type") == "string"
        and "enum" not in prop
        and "format" not in prop
        and "maxLength" not in prop
    ]
    assert unbounded == []


def test_the_root_rule_leaves_room_for_the_default_config_map_name(schema: Schema) -> None:
    (rule,) = schema["x-kubernetes-validations"]
    longest = CONFIG_MAP_NAME_MAX - len(default_config_map_name(""))
    assert f"size(self.metadata.name) <= {longest}" in rule["rule"]
    assert f"name of at most {longest} characters" in rule["message"]
    assert len(default_config_map_name("n" * longest)) == CONFIG_MAP_NAME_MAX


def test_config_map_name_is_a_dns_subdomain(spec_schema: Schema) -> None:
    prop = spec_schema["properties"]["configMapName"]
    assert prop["maxLength"] == 253
    pattern = re.compile(prop["pattern"])
    for good in ("vllm-router-config", "a", "a.b-c.d0", "0abc"):
        assert pattern.fullmatch(good), good
    for bad in ("Bad_Name", "-a", "a-", "a..b", ".a", "UPPER", "a b", ""):
        assert not pattern.fullmatch(bad), bad


# --- the CEL rules against the router's rules ---------------------------------------

_RAW_STRING = re.compile(r"""matches\(r'([^']*)'\)""")


def test_every_rule_explains_itself(rules: list[Schema], spec_schema: Schema) -> None:
    for rule in rules:
        field = rule["fieldPath"].removeprefix(".")
        assert field in spec_schema["properties"], rule["fieldPath"]
        assert field in rule["message"], f"the message of {rule['rule']!r} must name {field}"
        assert rule["reason"] in {"FieldValueRequired", "FieldValueInvalid"}


def test_backend_url_rule_is_the_routers_regex(rules: list[Schema]) -> None:
    backend_rules = [r for r in rules if "staticBackends" in r["rule"] and "matches(" in r["rule"]]
    assert backend_rules, "no CEL rule checks the backend URLs"
    for rule in backend_rules:
        assert _RAW_STRING.findall(rule["rule"]) == [routerconfig.ROUTER_URL_RE.pattern]
        # Items are trimmed first, as the operator does before writing them.
        assert ".trim().matches(" in rule["rule"]


def test_no_openapi_pattern_mentions_urls(schema: Schema) -> None:
    for path, prop in _walk(schema, ""):
        if "pattern" in prop and "http" in prop["pattern"]:
            assert prop["pattern"] == routerconfig.ROUTER_URL_RE.pattern, path


def test_model_types_rule_lists_the_routers_types(rules: list[Schema]) -> None:
    (rule,) = [r for r in rules if r["fieldPath"] == ".staticModelTypes" and " in [" in r["rule"]]
    listed = re.search(r"in \[([^\]]*)\]", rule["rule"])
    assert listed is not None
    assert tuple(re.findall(r"'([^']*)'", listed.group(1))) == api.MODEL_TYPES


def _with_alias(pair: str) -> api.StaticRouteSpec:
    model = pair.partition(":")[2].strip() or "m"  # an alias must name a listed model
    return api.StaticRouteSpec(
        static_backends="http://a.b.com", static_models=model, static_aliases=pair
    )


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("staticBackends", "FieldValueRequired"),
        ("staticModels", "FieldValueRequired"),
        ("sessionKey", "FieldValueRequired"),
        ("k8sPort", "FieldValueRequired"),
        ("staticModelTypes", "FieldValueRequired"),
        ("staticBackends", "FieldValueInvalid"),
        ("staticModels", "FieldValueInvalid"),
        ("staticModelTypes", "FieldValueInvalid"),
        ("staticAliases", "FieldValueInvalid"),
    ],
)
def test_each_router_rule_has_a_cel_rule(rules: list[Schema], field: str, reason: str) -> None:
    assert any(r["fieldPath"] == f".{field}" and r["reason"] == reason for r in rules)


def test_alias_rule_regex_matches_the_operator(rules: list[Schema]) -> None:
    """The staticAliases item regex accepts exactly what routerconfig.render accepts."""
    (rule,) = [r for r in rules if r["fieldPath"] == ".staticAliases"]
    (regex,) = _RAW_STRING.findall(rule["rule"])
    item = re.compile(regex)
    for pair in ("a:b", " a : b ", "gpt:meta-llama/Llama-3.1-8B-Instruct"):
        assert item.fullmatch(pair), pair
        routerconfig.render(_with_alias(pair))
    for pair in ("", "a", "a:", ":b", "a:b:c", " : ", "a: "):
        assert not item.fullmatch(pair), pair
        with pytest.raises(routerconfig.InvalidSpecError, match="staticAliases"):
            routerconfig.render(_with_alias(pair))


# --- the sample ---------------------------------------------------------------------


def test_sample_is_valid_for_the_operator() -> None:
    sample = _load_yaml(SAMPLE_PATH)
    assert sample["apiVersion"] == api.API_VERSION
    assert sample["kind"] == api.KIND
    assert "namespace" not in sample["metadata"]
    spec = api.StaticRouteSpec.model_validate(sample["spec"])
    rendered = routerconfig.render(spec)
    assert rendered.content["static_models"] == (
        "facebook/opt-6.7b,microsoft/Phi-3-mini-4k-instruct"
    )
    assert api.config_map_name(sample["metadata"]["name"], spec) == "vllm-router-config"
