"""Compacting cached StaticRoutes and ConfigMaps: the same content, shared strings."""

from __future__ import annotations

import json
from typing import Any

from router_controller.informer import LAST_APPLIED, compact

ROUTE = {
    "apiVersion": "production-stack.vllm.ai/v1alpha1",
    "kind": "StaticRoute",
    "metadata": {
        "name": "r1",
        "namespace": "team-a",
        "annotations": {LAST_APPLIED: '{"spec": "a second copy"}', "owner": "team-a"},
    },
    "spec": {"routingLogic": "roundrobin", "staticModels": "m1,m2"},
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
}


def decoded() -> Any:
    return json.loads(json.dumps(ROUTE))  # a fresh copy of every string, as the API gives


def test_content_is_kept_but_the_last_applied_annotation() -> None:
    expected = decoded()
    del expected["metadata"]["annotations"][LAST_APPLIED]
    assert compact(decoded()) == expected
    only_last_applied = decoded()
    only_last_applied["metadata"]["annotations"] = {LAST_APPLIED: "{}"}
    assert "annotations" not in compact(only_last_applied)["metadata"]


def test_keys_and_repeating_values_are_shared_between_objects() -> None:
    one, two = compact(decoded()), compact(decoded())
    key_one = next(k for k in one["spec"] if k == "routingLogic")
    key_two = next(k for k in two["spec"] if k == "routingLogic")
    assert key_one is key_two
    assert one["spec"]["routingLogic"] is two["spec"]["routingLogic"]
    assert one["status"]["conditions"][0]["reason"] is two["status"]["conditions"][0]["reason"]
    assert one["metadata"]["namespace"] is two["metadata"]["namespace"]
    # Values that are not known to repeat stay the object's own.
    raw_one, raw_two = decoded(), decoded()
    assert raw_one["spec"]["staticModels"] is not raw_two["spec"]["staticModels"]


def test_parts_equal_to_a_like_object_are_taken_from_it() -> None:
    cached = compact(decoded())
    answer = decoded()  # the next version: a new resourceVersion and status
    answer["metadata"]["resourceVersion"] = "2"
    answer["status"] = {"conditions": [{"type": "Ready", "status": "False", "reason": "Bad"}]}
    answer["metadata"]["generation"] = True
    cached["metadata"]["generation"] = 1  # equal to True in Python, but not the same JSON
    expected = decoded()
    del expected["metadata"]["annotations"][LAST_APPLIED]
    expected["metadata"]["resourceVersion"] = "2"
    expected["status"] = answer["status"]
    expected["metadata"]["generation"] = True

    result = compact(answer, like=cached)

    assert result == expected
    assert result["metadata"]["generation"] is True
    assert result["spec"] is cached["spec"]
    assert result["metadata"]["annotations"] is cached["metadata"]["annotations"]
    assert result["metadata"] is not cached["metadata"]
    assert result["status"] is not cached["status"]
    # What is not taken from ``like`` is compacted as usual.
    again = compact(decoded())
    assert result["status"]["conditions"][0]["type"] is again["status"]["conditions"][0]["type"]
