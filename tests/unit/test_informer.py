"""What the caches keep of Services and EndpointSlices, and which watch lines are events.

The trimmed shapes are the informer's contract with the code that reads the caches
(the prober): these tests pin what is kept, what is dropped, and that packed
endpoints read back exactly as the API wrote them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from router_controller.informer import PackedEndpoints, trim_endpointslice, trim_service
from router_controller.kube import MalformedWatchEvent

METADATA = {
    "name": "router",
    "namespace": "team-a",
    "uid": "6f1c1a52-9d7e-4d43-9a4b-3f7f6f0c2a10",
    "resourceVersion": "4711",
    "generation": 3,
    "labels": {"app": "router"},
    "deletionTimestamp": "2026-12-01T20:00:00Z",
}
NOISE_METADATA = {
    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 4000},
    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
    "creationTimestamp": "2026-12-01T19:00:00Z",
    "ownerReferences": [{"kind": "Deployment", "name": "d", "uid": "u"}],
    "finalizers": ["x"],
}


def full_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**METADATA, **NOISE_METADATA},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.0.0.7",
            "clusterIPs": ["10.0.0.7"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8000}],
            "selector": {"app": "router"},
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


ENDPOINTS: list[dict[str, Any]] = [
    {
        "addresses": ["10.1.0.1"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "node-1",
        "zone": "a",
        "targetRef": {"kind": "Pod", "namespace": "team-a", "name": "router-1", "uid": "p1"},
        "hints": {"forZones": [{"name": "a"}]},
    },
    {"addresses": ["10.1.0.2", "10.1.0.3"], "conditions": {"ready": False}},
    {"addresses": ["fd00::1"], "conditions": {}},
    {"addresses": [], "conditions": {"serving": False, "terminating": True}},
    {"addresses": ["router-4.team-a.example.com"]},
]


def full_slice() -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            **METADATA,
            **NOISE_METADATA,
            "name": "router-abcde",
            "labels": {"kubernetes.io/service-name": "router"},
        },
        "addressType": "IPv4",
        "endpoints": ENDPOINTS,
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
    }


def test_a_trimmed_service_keeps_what_the_operator_reads_and_nothing_else() -> None:
    trimmed = trim_service(full_service())
    assert trimmed == {
        "metadata": METADATA,
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.0.0.7",
            "clusterIPs": ["10.0.0.7"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8000}],
        },
    }


def test_an_external_name_service_keeps_its_name() -> None:
    svc = full_service()
    svc["spec"] = {"type": "ExternalName", "externalName": "router.example.com"}
    assert trim_service(svc)["spec"] == {
        "type": "ExternalName",
        "externalName": "router.example.com",
    }


def test_a_trimmed_endpointslice_keeps_addresses_conditions_and_ports() -> None:
    trimmed = trim_endpointslice(full_slice())
    assert set(trimmed) == {"metadata", "addressType", "endpoints", "ports"}
    assert trimmed["metadata"] == {**METADATA, "name": "router-abcde", "labels": {
        "kubernetes.io/service-name": "router"
    }}  # fmt: skip
    assert trimmed["addressType"] == "IPv4"
    assert trimmed["ports"] == [{"name": "http", "port": 8000, "protocol": "TCP"}]
    assert isinstance(trimmed["endpoints"], PackedEndpoints)
    assert list(trimmed["endpoints"]) == [
        {
            "addresses": ["10.1.0.1"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
        },
        {"addresses": ["10.1.0.2", "10.1.0.3"], "conditions": {"ready": False}},
        {"addresses": ["fd00::1"], "conditions": {}},
        {"addresses": [], "conditions": {"serving": False, "terminating": True}},
        {"addresses": ["router-4.team-a.example.com"], "conditions": {}},
    ]


def test_packed_endpoints_read_like_the_list_they_came_from() -> None:
    kept = [{"addresses": e["addresses"], "conditions": e.get("conditions", {})} for e in ENDPOINTS]
    packed = PackedEndpoints(ENDPOINTS)
    assert len(packed) == len(ENDPOINTS)
    assert packed == kept
    assert packed[1] == kept[1]
    assert packed[-1] == kept[-1]
    assert packed[1:3] == kept[1:3]
    assert packed != kept[:-1]
    assert bool(PackedEndpoints([])) is False
    assert list(PackedEndpoints([])) == []
    assert list(PackedEndpoints([{"addresses": []}])) == [{"addresses": [], "conditions": {}}]
    # A reader changing what it got does not change the cache.
    next(iter(packed))["addresses"].append("10.9.9.9")
    assert packed == kept


def test_missing_or_odd_fields_do_not_break_trimming() -> None:
    assert trim_service({"metadata": {"name": "s"}}) == {"metadata": {"name": "s"}, "spec": {}}
    odd = trim_endpointslice({"metadata": {"name": "e"}, "endpoints": None})
    assert odd == {"metadata": {"name": "e"}, "endpoints": []}
    assert list(PackedEndpoints(["not an endpoint", {"addresses": ["10.0.0.1"]}])) == [
        {"addresses": ["10.0.0.1"], "conditions": {}}
    ]


def test_trimming_drops_most_of_a_big_slice() -> None:
    big = full_slice()
    big["endpoints"] = [
        {**ENDPOINTS[0], "addresses": [f"10.2.{i // 256}.{i % 256}"]} for i in range(100)
    ]
    trimmed = trim_endpointslice(big)
    packed = trimmed["endpoints"]
    # One string and one byte per endpoint: the size of the addresses themselves.
    assert len(packed._addresses) < 100 * 13
    assert len(packed._conditions) == 100
    assert [e["addresses"][0] for e in packed] == [e["addresses"][0] for e in big["endpoints"]]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"this is not json", "is not JSON"),
        (b'{"type": "ADDED", "object": {"metadata"', "is not JSON"),
        (b'["ADDED", {}]', "is not a JSON object"),
        (b'"ADDED"', "is not a JSON object"),
        (b"42", "is not a JSON object"),
        (b'{"object": {"metadata": {"name": "x"}}}', "is not a watch event"),
        (b'{"type": "ADDED", "object": "x"}', "is not a watch event"),
        (b'{"type": "RENAMED", "object": {"metadata": {"name": "x"}}}', "is not a watch event"),
        (b'{"type": "ADDED", "object": {}}', "ADDED event whose object has no metadata.name"),
        (b'{"type": "MODIFIED", "object": {"metadata": {"name": ""}}}', "no metadata.name"),
        (b'{"type": "DELETED", "object": {"metadata": {"name": 7}}}', "no metadata.name"),
        (b'{"type": "ADDED", "object": {"metadata": []}}', "no metadata.name"),
    ],
)
def test_a_line_that_is_not_a_well_formed_event_is_refused(line: bytes, problem: str) -> None:
    with pytest.raises(MalformedWatchEvent, match=problem) as caught:
        MalformedWatchEvent.decode(line, "/api/v1/services")
    assert isinstance(caught.value, ValueError)
    assert "/api/v1/services" in str(caught.value)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "ADDED", "object": {"metadata": {"name": "x", "namespace": "a"}}},
        {"type": "DELETED", "object": {"metadata": {"name": "x"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}},
    ],
)
def test_well_formed_events_are_decoded(event: dict[str, Any]) -> None:
    assert MalformedWatchEvent.decode(json.dumps(event).encode(), "/x") == event
