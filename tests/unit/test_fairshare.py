"""fairshare: probe slots handed out in turn between namespaces and StaticRoutes, under caps."""

from __future__ import annotations

import pytest

from router_controller.fairshare import FairSlots, Limits


def drain(slots: FairSlots[str]) -> list[str]:
    """Pop until nothing more may start; the items in the order they were handed out."""
    out = []
    while (picked := slots.pop()) is not None:
        out.append(picked[2])
    return out


def test_limits_share_half_per_namespace_and_a_quarter_per_staticroute() -> None:
    assert Limits.sharing(64) == Limits(total=64, per_tenant=32, per_group=16)
    assert Limits.sharing(1) == Limits(total=1, per_tenant=1, per_group=1)
    with pytest.raises(ValueError, match="at least one"):
        Limits.sharing(0)


def test_tenants_are_served_in_turn() -> None:
    slots: FairSlots[str] = FairSlots(Limits(total=100, per_tenant=100, per_group=100))
    for i in range(3):
        slots.push("a", "r", f"a{i}")
    slots.push("b", "r", "b0")
    slots.push("c", "r", "c0")
    assert drain(slots) == ["a0", "b0", "c0", "a1", "a2"]


def test_a_tenant_at_its_cap_leaves_the_other_slots_to_the_others() -> None:
    slots: FairSlots[str] = FairSlots(Limits(total=4, per_tenant=2, per_group=2))
    for i in range(10):
        slots.push("hung", f"r{i}", f"h{i}")
    assert drain(slots) == ["h0", "h1"]  # two free slots stay out of its reach
    slots.push("good", "r", "g0")
    assert drain(slots) == ["g0"]
    assert slots.in_flight_of("hung") == 2
    slots.release("good", "r")
    slots.push("good", "r", "g1")
    assert drain(slots) == ["g1"]
    # A slot freed by the hung tenant goes back to it, one at a time.
    slots.release("hung", "r0")
    assert drain(slots) == ["h2"]


def test_the_total_caps_everyone_and_a_freed_slot_goes_to_the_next_in_turn() -> None:
    slots: FairSlots[str] = FairSlots(Limits(total=2, per_tenant=2, per_group=2))
    for tenant in "abc":
        for i in range(2):
            slots.push(tenant, "r", f"{tenant}{i}")
    assert drain(slots) == ["a0", "b0"]
    slots.release("a", "r")
    assert drain(slots) == ["c0"]
    slots.release("b", "r")
    assert drain(slots) == ["a1"]
    assert slots.ready == 2
    assert slots.in_flight == 2


def test_groups_of_one_tenant_are_served_in_turn_under_their_cap() -> None:
    slots: FairSlots[str] = FairSlots(Limits(total=10, per_tenant=4, per_group=2))
    for i in range(5):
        slots.push("ns", "many", f"m{i}")
    slots.push("ns", "one", "o0")
    assert drain(slots) == ["m0", "o0", "m1"]  # "many" stops at its cap of 2
    slots.release("ns", "many")
    assert drain(slots) == ["m2"]
    assert slots.in_flight_of("ns") == 3


def test_a_tenant_that_went_idle_starts_afresh() -> None:
    slots: FairSlots[str] = FairSlots(Limits(total=8, per_tenant=1, per_group=1))
    slots.push("ns", "r", "x")
    assert drain(slots) == ["x"]
    slots.release("ns", "r")
    assert (slots.in_flight, slots.ready, slots.in_flight_of("ns")) == (0, 0, 0)
    slots.push("ns", "r", "y")
    assert drain(slots) == ["y"]
