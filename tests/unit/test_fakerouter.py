"""The fake router does with every file what the real router does (the conformance table).

``tests/conformance/cases.py`` lists the specs the operator accepts and the ones it
refuses, with what vllm_router does with each file; ``make router-conformance`` checks
that table against a real router. Here the same table runs on the fake the e2e tests
use, so a test that passes against the fake says something about the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from router_controller_dev.fakerouter import LOAD_ERROR, NO_NAMESPACE, FakeRouter
from tests.conformance import cases

BACKENDS = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]


def _base() -> dict[str, Any]:
    (base,) = [case for case in cases.ACCEPTED if case.id == cases.BASE]
    return cases.operator_file(base, BACKENDS)


def _served(router: FakeRouter, content: Mapping[str, Any]) -> bool:
    return router.dynamic_config == {
        key: content.get(key, value if key.startswith("static_backend_health_check") else None)
        for key, value in FakeRouter().dynamic_config.items()
    }


@pytest.mark.parametrize("case", cases.ACCEPTED, ids=[c.id for c in cases.ACCEPTED])
async def test_every_file_the_operator_writes_is_served(case: cases.Accepted) -> None:
    content = cases.operator_file(case, BACKENDS)
    started = FakeRouter(host="127.0.0.1")
    assert await started.boot(content)
    assert _served(started, content)
    reloaded = FakeRouter(host="127.0.0.1")
    assert reloaded.load(_base())
    assert reloaded.load(content)
    assert _served(reloaded, content)
    if case.k8s:
        assert reloaded.discovery.error is None
        return
    for index, model in enumerate(cases.MODELS):
        if model in content["static_models"]:
            assert reloaded.route(model) == (200, BACKENDS[index])
    aliases = dict(
        pair.split(":") for pair in str(content.get("static_aliases", "")).split(",") if pair
    )
    for alias in case.requests:
        assert reloaded.route(alias) == (200, BACKENDS[cases.MODELS.index(aliases[alias])])


@pytest.mark.parametrize("case", cases.REFUSED, ids=[c.id for c in cases.REFUSED])
async def test_every_refused_file_misbehaves(case: cases.Refused) -> None:
    content = cases.unchecked_file(case, BACKENDS)
    assert cases.refused_by_operator(case, BACKENDS)
    request = case.request or cases.MODELS[0]
    if case.start is not None:
        router = FakeRouter(host="127.0.0.1")
        started = await router.boot(content)
        assert started == (case.start != "crash")
        if case.start == "fails":
            assert router.route(request)[0] == case.status
    if case.reload is None:
        return
    router = FakeRouter(host="127.0.0.1")
    base = _base()
    assert router.load(base)
    applied = router.load(content)
    if case.reload in ("refused", "half-applied"):
        assert not applied
        assert _served(router, base)  # /health keeps the previous file
        assert router.load_errors[-1].startswith(LOAD_ERROR)
        # Refused: still the old backends. Half applied: already the new ones.
        expected = (200, BACKENDS[0]) if case.reload == "half-applied" else (404,)
        assert router.route(cases.MODELS[0])[: len(expected)] == expected
    elif case.reload == "fails":
        assert applied
        assert _served(router, content)
        assert router.route(request)[0] == case.status
    else:
        assert case.reload == "no-namespace"
        assert applied
        assert _served(router, content)  # /health looks fine...
        assert router.discovery.error == NO_NAMESPACE  # ...while the pod watch fails


async def test_a_router_that_does_not_reload_keeps_its_config() -> None:
    router = FakeRouter(host="127.0.0.1")
    assert router.load(_base())
    router.frozen = True
    assert not router.load({**_base(), "static_models": "other"})
    assert _served(router, _base())


async def test_disaggregated_prefill_keeps_its_start_up_backends() -> None:
    """Its clients are made at start-up only: a reload never moves them."""
    labelled = {
        "service_discovery": "static",
        "routing_logic": "disaggregated_prefill",
        "static_backends": ",".join(BACKENDS[:2]),
        "static_models": "m,m",
        "static_model_labels": "p,d",
        "prefill_model_labels": "p",
        "decode_model_labels": "d",
    }
    router = FakeRouter(host="127.0.0.1")
    assert await router.boot(labelled)
    assert router.route("m") == (200, BACKENDS[1])
    swapped = {**labelled, "static_backends": ",".join([BACKENDS[2], BACKENDS[0]])}
    assert router.load(swapped)
    assert _served(router, swapped)
    assert router.route("m") == (200, BACKENDS[1])  # still the old decode backend


async def test_requests_over_http_get_the_backend_or_the_routers_error() -> None:
    async with FakeRouter(host="127.0.0.1") as router, aiohttp.ClientSession() as http:
        assert router.load(_base())
        url = f"{router.address}/v1/chat/completions"
        async with http.post(url, json={"model": cases.MODELS[2]}) as answer:
            assert answer.status == 200
            assert await answer.json() == {"backend": BACKENDS[2], "model": cases.MODELS[2]}
        async with http.post(url, json={"model": cases.MODELS[0]}) as answer:
            assert answer.status == 404
        assert router.routed == {BACKENDS[2]: 1}
