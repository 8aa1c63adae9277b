"""Routing policies behind one interface (``RoutingPolicy.select``), one file each, and a factory.

make_policy("sticky")             # the default: a session keeps its engine, else least outstanding
make_policy("least_outstanding")  # fewest requests in flight
make_policy("round_robin")        # in turn
"""

from __future__ import annotations

from collections.abc import Callable

from .base import RequestInfo, RoutingPolicy, usable
from .least_outstanding import LeastOutstanding
from .round_robin import RoundRobin
from .sticky import Sticky

DEFAULT_POLICY = "sticky"  # sticky by session over least outstanding: the gateway's behaviour before policies
POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    LeastOutstanding.name: LeastOutstanding,
    RoundRobin.name: RoundRobin,
    Sticky.name: Sticky,
}


def check_policy_name(name: str) -> None:
    """Raises ValueError naming the known policies when ``name`` is not one of them."""
    if name not in POLICIES:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown routing policy {name!r}: choose one of {known}")


def make_policy(name: str = DEFAULT_POLICY) -> RoutingPolicy:
    """A fresh policy (policies keep per-pool state, so each pool gets its own)."""
    check_policy_name(name)
    return POLICIES[name]()


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "LeastOutstanding",
    "RequestInfo",
    "RoundRobin",
    "RoutingPolicy",
    "Sticky",
    "check_policy_name",
    "make_policy",
    "usable",
]
