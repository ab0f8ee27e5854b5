"""routerconfig: the exact file the router reads, and every rule that keeps a bad one out.

The router refuses a whole file for one bad backend URL or a count mismatch, and
half-applies an invalid routing logic, so the rendered bytes and each refusal message
are pinned here: a change in either is a change users see.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest

from router_controller import routerconfig
from router_controller.api import MODEL_TYPES, RoutingLogic, StaticRouteSpec
from router_controller.routerconfig import (
    NOT_EXPOSED,
    ROUTER_DEFAULTS,
    ROUTER_KEYS,
    SPEC_FIELDS,
    UNSUPPORTED_ROUTING_LOGIC,
    InvalidSpecError,
    Written,
    config_mismatches,
    render,
    serialize,
)

BACKENDS = "http://opt.default.svc.cluster.local:8000,http://phi.default.svc.cluster.local:8000"
MODELS = "facebook/opt-125m,microsoft/Phi-3-mini-4k-instruct"


def spec(**fields: Any) -> StaticRouteSpec:
    """A spec from camelCase wire fields, as the API server hands them over."""
    return StaticRouteSpec.model_validate(fields)


def static(**fields: Any) -> StaticRouteSpec:
    """A valid static spec with two backends, plus ``fields`` (snake_case)."""
    base: dict[str, Any] = {"static_backends": BACKENDS, "static_models": MODELS}
    base.update(fields)
    return StaticRouteSpec(**base)


def problems(value: StaticRouteSpec, *, namespace: str | None = None) -> str:
    with pytest.raises(InvalidSpecError) as caught:
        render(value, namespace=namespace)
    return str(caught.value)


# --- rendering ----------------------------------------------------------------------


def test_minimal_spec_renders_exact_bytes() -> None:
    rendered = render(spec(staticBackends=BACKENDS, staticModels=MODELS))
    assert rendered.data == (
        "{\n"
        '  "routing_logic": "roundrobin",\n'
        '  "service_discovery": "static",\n'
        '  "static_backends": "http://opt.default.svc.cluster.local:8000,'
        'http://phi.default.svc.cluster.local:8000",\n'
        '  "static_models": "facebook/opt-125m,microsoft/Phi-3-mini-4k-instruct"\n'
        "}\n"
    )
    assert rendered.content == {
        "routing_logic": "roundrobin",
        "service_discovery": "static",
        "static_backends": BACKENDS,
        "static_models": MODELS,
    }


def test_full_spec_renders_every_key_trimmed_and_sorted() -> None:
    rendered = render(
        static(
            static_backends=" http://a.example.com:8000 , https://10.0.0.7/v1 ",
            static_models=" m1 ,  m2 ",
            routing_logic="session",
            session_key=" x-user-id ",
            static_aliases=" fast : m1 , big:m2",
            static_model_labels=" l1 , l2",
            static_model_types="chat, embeddings",
            static_backend_health_checks=True,
            static_backend_health_check_interval=30,
            static_backend_health_check_timeout_seconds=5,
            prefill_model_labels="p",
            decode_model_labels="d",
        )
    )
    assert rendered.data == (
        "{\n"
        '  "decode_model_labels": "d",\n'
        '  "prefill_model_labels": "p",\n'
        '  "routing_logic": "session",\n'
        '  "service_discovery": "static",\n'
        '  "session_key": "x-user-id",\n'
        '  "static_aliases": "fast:m1,big:m2",\n'
        '  "static_backend_health_check_interval": 30,\n'
        '  "static_backend_health_check_timeout_seconds": 5,\n'
        '  "static_backend_health_checks": true,\n'
        '  "static_backends": "http://a.example.com:8000,https://10.0.0.7/v1",\n'
        '  "static_model_labels": "l1,l2",\n'
        '  "static_model_types": "chat,embeddings",\n'
        '  "static_models": "m1,m2"\n'
        "}\n"
    )
    assert set(rendered.content) <= ROUTER_KEYS
    assert json.loads(rendered.data) == rendered.content


def test_k8s_discovery_names_the_staticroutes_namespace() -> None:
    # Without k8s_namespace the router's reload would watch pods with namespace=None.
    rendered = render(StaticRouteSpec(service_discovery="k8s", k8s_port=8000), namespace="team-a")
    assert rendered.data == (
        '{\n  "k8s_namespace": "team-a",\n  "k8s_port": 8000,\n'
        '  "routing_logic": "roundrobin",\n  "service_discovery": "k8s"\n}\n'
    )


def test_k8s_discovery_keeps_a_namespace_it_was_given() -> None:
    given = StaticRouteSpec(
        service_discovery="k8s", k8s_port=8000, k8s_namespace=" models ", k8s_label_selector=""
    )
    assert render(given, namespace="team-a").content == {
        "k8s_namespace": "models",
        "k8s_port": 8000,
        "k8s_label_selector": "",
        "routing_logic": "roundrobin",
        "service_discovery": "k8s",
    }


def test_k8s_discovery_without_any_namespace_is_never_written() -> None:
    assert problems(StaticRouteSpec(service_discovery="k8s", k8s_port=8000)) == (
        "spec.k8sNamespace is required when serviceDiscovery is k8s and the "
        "StaticRoute's namespace is not known"
    )


def test_rendering_is_deterministic() -> None:
    first = render(static(static_aliases="a:facebook/opt-125m", session_key="k"))
    again = render(static(session_key="k", static_aliases="a:facebook/opt-125m"))
    assert first.data == again.data
    assert serialize(dict(reversed(list(first.content.items())))) == first.data


def test_unicode_is_written_as_is() -> None:
    assert serialize({"static_models": "modèle"}) == '{\n  "static_models": "modèle"\n}\n'


@pytest.mark.parametrize(
    "content",
    [
        {"routing_logic": "roundrobin", "static_backend_health_checks": True, "k8s_port": 8000},
        {"session_key": 'quote " backslash \\ newline \n tab \t \u2028 ü', "k8s_port": -1},
        {"static_backend_health_checks": False, "static_aliases": None},
        {"b": "1", "a": "2"},
        {"x": 1.5},
        {"x": [1, "a"]},
        {"x": {"nested": True}},
        {},
    ],
)
def test_the_file_is_written_as_json_dumps_writes_it(content: dict[str, Any]) -> None:
    expected = json.dumps(content, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert serialize(content) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost",
        "http://localhost:8000",
        "https://a.b.co/path/x",
        "http://192.168.1.10:8000",
        "http://my_svc.ns.svc.cluster.local:8000",
        "http://UPPER.Example.COM",
    ],
)
def test_backend_urls_the_router_accepts(url: str) -> None:
    assert render(static(static_backends=url, static_models="m")).content["static_backends"] == url


# --- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "HTTP://a.b.com",
            "spec.staticBackends: 'HTTP://a.b.com' is not a URL the router accepts: "
            "write the scheme in lower case",
        ),
        (
            "http://[::1]:8000",
            "spec.staticBackends: 'http://[::1]:8000' is not a URL the router accepts: "
            "the router does not accept IPv6 literals; use a DNS name or an IPv4 address",
        ),
        (
            "http://my-svc:8000",
            "spec.staticBackends: 'http://my-svc:8000' is not a URL the router accepts: "
            "the router drops host names without a dot; write the Service's full name, "
            "e.g. my-svc.NAMESPACE.svc.cluster.local",
        ),
        (
            "ftp://a.b.com",
            "spec.staticBackends: 'ftp://a.b.com' is not a URL the router accepts: "
            "use http:// or https:// and a dotted host name, localhost or an IPv4 address",
        ),
        (
            "http://a.b.c0m",
            "spec.staticBackends: 'http://a.b.c0m' is not a URL the router accepts: "
            "use http:// or https:// and a dotted host name, localhost or an IPv4 address",
        ),
    ],
)
def test_backend_url_refusals(url: str, message: str) -> None:
    assert problems(static(static_backends=url, static_models="m")) == message


def test_empty_items_are_refused_with_their_positions() -> None:
    assert problems(static(static_models="m1,,m2,")) == (
        'spec.staticModels: item 2, 4 of 4 is empty; remove the extra comma (e.g. "a,,b" -> "a,b")'
    )


def test_count_mismatch() -> None:
    assert problems(static(static_models="m1")) == (
        "spec.staticBackends has 2 URLs but spec.staticModels has 1 models; "
        "give exactly one model per backend"
    )


def test_static_discovery_needs_backends_and_models() -> None:
    assert problems(StaticRouteSpec()) == (
        "spec.staticBackends is required when serviceDiscovery is static; "
        "spec.staticModels is required when serviceDiscovery is static"
    )
    assert problems(StaticRouteSpec(static_backends="", static_models="m")) == (
        'spec.staticBackends: item 1 of 1 is empty; remove the extra comma (e.g. "a,,b" -> "a,b"); '
        "spec.staticBackends is required when serviceDiscovery is static"
    )


def test_k8s_discovery_needs_a_port() -> None:
    assert problems(StaticRouteSpec(service_discovery="k8s"), namespace="ns") == (
        "spec.k8sPort is required when serviceDiscovery is k8s"
    )


@pytest.mark.parametrize("key", [None, "", "   "])
def test_session_routing_needs_a_session_key(key: str | None) -> None:
    assert problems(static(routing_logic="session", session_key=key)) == (
        "spec.sessionKey is required when routingLogic is session"
    )


@pytest.mark.parametrize("pair", ["a", "a:b:c", ":m1", "a:", " : "])
def test_aliases_must_be_alias_colon_model(pair: str) -> None:
    shown = pair.strip()
    assert problems(static(static_aliases=f"ok:facebook/opt-125m,{pair}")) == (
        f'spec.staticAliases: {shown!r} is not alias:model; write "alias:model,alias:model"'
    )


def test_unknown_model_types() -> None:
    assert problems(static(static_model_types="chat,video")) == (
        "spec.staticModelTypes: unknown model type 'video'; each must be one of "
        "chat, completion, embeddings, rerank, score, transcription, vision, messages"
    )


def test_model_types_count_must_match_models() -> None:
    assert problems(static(static_model_types="chat")) == (
        "spec.staticModelTypes has 1 types but spec.staticModels has 2 models; "
        "give one type per model"
    )


def test_backend_health_checks_need_model_types() -> None:
    assert problems(static(static_backend_health_checks=True)) == (
        "spec.staticModelTypes is required when staticBackendHealthChecks is true "
        f"(one of {', '.join(MODEL_TYPES)} per model)"
    )


def test_every_problem_is_reported_at_once() -> None:
    message = problems(
        static(
            static_backends="http://my-svc:8000",
            routing_logic="session",
            static_model_types="bogus,chat",
        )
    )
    expected = [
        "spec.staticBackends: 'http://my-svc:8000' is not a URL the router accepts",
        "spec.staticBackends has 1 URLs but spec.staticModels has 2 models",
        "spec.sessionKey is required when routingLogic is session",
        "spec.staticModelTypes: unknown model type 'bogus'",
    ]
    positions = [message.index(fragment) for fragment in expected]
    assert positions == sorted(positions)


def test_invalid_spec_error_is_a_value_error() -> None:
    assert issubclass(InvalidSpecError, ValueError)
    assert routerconfig.RenderedConfig.__dataclass_params__.frozen  # type: ignore[attr-defined]


# --- what the router cannot serve from a file ----------------------------------------


@pytest.mark.parametrize(
    ("logic", "fragments"),
    [
        ("kvaware", ("LMCache controller settings", "without --dynamic-config-json")),
        (
            "disaggregated_prefill",
            ("prefill and decode clients only at start-up", "--prefill-model-labels"),
        ),
        ("disaggregated_prefill_orchestrated", ("fails with 503", "--decode-model-labels")),
    ],
)
def test_routing_logics_a_reload_cannot_build_are_refused(
    logic: str, fragments: tuple[str, ...]
) -> None:
    labelled = static(
        routing_logic=logic,
        static_model_labels="p,d",
        prefill_model_labels="p",
        decode_model_labels="d",
    )
    message = problems(labelled)
    assert message.startswith(f"spec.routingLogic {logic} cannot be applied from a dynamic")
    for fragment in fragments:
        assert fragment in message


def test_every_routing_logic_is_written_or_refused() -> None:
    for logic in typing.get_args(RoutingLogic):
        value = static(routing_logic=logic, session_key="x-user")
        if logic in UNSUPPORTED_ROUTING_LOGIC:
            assert problems(value) == UNSUPPORTED_ROUTING_LOGIC[logic]
        else:
            assert render(value).content["routing_logic"] == logic


def test_model_labels_need_one_label_per_model() -> None:
    # With fewer labels the router fails every request with an IndexError.
    assert problems(static(static_model_labels="only-one")) == (
        "spec.staticModelLabels has 1 labels but spec.staticModels has 2 models; give one "
        "label per model (with fewer, the router fails every request)"
    )
    assert problems(static(static_model_labels="a,b,c")).startswith(
        "spec.staticModelLabels has 3 labels"
    )
    assert render(static(static_model_labels=" a , b ")).content["static_model_labels"] == "a,b"


def test_an_alias_must_name_a_listed_model() -> None:
    # The router answers 404 for an alias whose model it does not serve.
    assert problems(static(static_aliases="fast:facebook/opt-125m,big:opt-66b")) == (
        "spec.staticAliases: 'big:opt-66b' points at 'opt-66b', which is not in "
        "spec.staticModels, so the router answers 404 for it; name one of the models"
    )


def test_static_only_features_are_refused_with_k8s_discovery() -> None:
    k8s: dict[str, Any] = {"service_discovery": "k8s", "k8s_port": 8000}
    assert problems(StaticRouteSpec(**k8s, static_aliases="a:m"), namespace="ns") == (
        "spec.staticAliases has no effect with serviceDiscovery k8s (the router's Kubernetes "
        "discovery has no aliases, so requests for an alias get 404): remove it, or use "
        "serviceDiscovery static"
    )
    checks = StaticRouteSpec(**k8s, static_backend_health_checks=True, static_model_types="chat")
    assert problems(checks, namespace="ns") == (
        "spec.staticBackendHealthChecks has no effect with serviceDiscovery k8s (the router's "
        "Kubernetes discovery ignores it): remove it, or use serviceDiscovery static"
    )
    off = StaticRouteSpec(**k8s, static_backend_health_checks=False)
    assert render(off, namespace="ns").content["static_backend_health_checks"] is False


def test_the_table_covers_every_key_and_routing_logic() -> None:
    """The module's table says, for each, what the router and the operator do."""
    table = routerconfig.__doc__ or ""
    for entry in [*ROUTER_KEYS, *typing.get_args(RoutingLogic)]:
        assert f"``{entry}``" in table, entry


# --- the spec field -> router key table ------------------------------------------------


def test_every_spec_field_is_written_or_deliberately_not() -> None:
    fields = [row.field for row in SPEC_FIELDS]
    assert len(fields) == len(set(fields)), "one row per field"
    assert set(fields) == set(StaticRouteSpec.model_fields), (
        "give each StaticRouteSpec field a row in routerconfig.SPEC_FIELDS"
    )
    for row in SPEC_FIELDS:
        assert (row.key is None) == (row.written is Written.NOT_WRITTEN), row
        if row.written is not Written.COPIED:
            assert row.note, f"{row.field}: say which function writes it, or why it is not"


def test_every_row_writes_a_key_the_router_accepts() -> None:
    keys = [row.key for row in SPEC_FIELDS if row.key is not None]
    for key in keys:
        assert key in ROUTER_KEYS, key
    assert len(keys) == len(set(keys)), "one field per key"
    # And every key the router accepts is set by a field or deliberately left out.
    assert set(keys) | set(NOT_EXPOSED) == ROUTER_KEYS
    assert not set(keys) & set(NOT_EXPOSED)


def test_rendered_rows_name_a_function_of_the_module() -> None:
    for row in SPEC_FIELDS:
        if row.written is Written.RENDERED:
            assert callable(getattr(routerconfig, row.note, None)), row


def test_a_spec_with_every_field_set_writes_every_key_of_the_table() -> None:
    full = static(
        routing_logic="session",
        session_key="x-user-id",
        static_aliases="fast:facebook/opt-125m",
        static_model_labels="l1,l2",
        static_model_types="chat,chat",
        static_backend_health_checks=True,
        static_backend_health_check_interval=30,
        static_backend_health_check_timeout_seconds=5,
        prefill_model_labels="p",
        decode_model_labels="d",
        k8s_port=8000,
        k8s_namespace="ns",
        k8s_label_selector="app=model",
        router_ref={"name": "router"},
        router_selector={"matchLabels": {"app": "router"}},
        router_port="http",
        health_check={},
        config_map_name="elsewhere",
    )
    assert all(getattr(full, name) is not None for name in StaticRouteSpec.model_fields)
    written = {row.key for row in SPEC_FIELDS if row.key is not None}
    assert set(render(full).content) == written


# --- config_mismatches --------------------------------------------------------------

EXPECTED: dict[str, Any] = {
    "routing_logic": "roundrobin",
    "service_discovery": "static",
    "static_backends": "http://a.b.com:8000",
    "static_models": "m",
}


def _health(**overrides: Any) -> dict[str, Any]:
    """What the router's /health shows for EXPECTED: all 17 keys, unset ones null/default."""
    running: dict[str, Any] = dict.fromkeys(ROUTER_KEYS)
    running.update(ROUTER_DEFAULTS)
    running.update(EXPECTED)
    running.update(overrides)
    return running


def test_router_running_our_config_has_no_mismatch() -> None:
    assert config_mismatches(EXPECTED, _health()) == []
    assert config_mismatches(EXPECTED, dict(EXPECTED)) == []


def test_changed_value_is_a_mismatch() -> None:
    assert config_mismatches(EXPECTED, _health(static_models="other")) == ["static_models"]


def test_missing_key_is_a_mismatch() -> None:
    running = _health()
    del running["static_backends"]
    assert config_mismatches(EXPECTED, running) == ["static_backends"]


def test_extra_key_set_on_the_router_is_a_mismatch() -> None:
    assert config_mismatches(EXPECTED, _health(session_key="x", k8s_port=80)) == [
        "k8s_port",
        "session_key",
    ]


def test_non_default_router_default_is_a_mismatch() -> None:
    assert config_mismatches(EXPECTED, _health(static_backend_health_check_interval=30)) == [
        "static_backend_health_check_interval"
    ]


def test_set_default_key_must_match_exactly() -> None:
    expected = {**EXPECTED, "static_backend_health_checks": True}
    assert config_mismatches(expected, _health()) == ["static_backend_health_checks"]
    assert config_mismatches(expected, _health(static_backend_health_checks=True)) == []


@pytest.mark.parametrize("running", [None, "healthy", ["a"], 3])
def test_unreadable_dynamic_config_mismatches_every_key(running: Any) -> None:
    assert config_mismatches(EXPECTED, running) == sorted(EXPECTED)


def test_mismatches_are_sorted() -> None:
    result = config_mismatches(EXPECTED, _health(static_models="x", routing_logic="session"))
    assert result == ["routing_logic", "static_models"]
