"""Routing policies (``bebop.service.gateway.routing``): each policy's choice, the shared filter of
unhealthy and excluded engines, the factory, and the pool and settings that use them."""

import pytest

from bebop.service.gateway.pool import EnginePool, EngineState, NoEngineAvailable
from bebop.service.gateway.routing import (
    DEFAULT_POLICY,
    POLICIES,
    LeastOutstanding,
    RequestInfo,
    RoundRobin,
    RoutingPolicy,
    Sticky,
    make_policy,
    usable,
)
from bebop.service.gateway.settings import GatewaySettings


def engines(*outstanding: int, served: tuple[int, ...] | None = None) -> list[EngineState]:
    """Healthy engines a, b, c, ... with these outstanding counts (and served counts)."""
    served = served or (0,) * len(outstanding)
    return [
        EngineState(f"http://{chr(ord('a') + i)}:1", healthy=True, outstanding=o, served=s)
        for i, (o, s) in enumerate(zip(outstanding, served, strict=True))
    ]


def request(session_id: str | None = None, exclude: tuple[str, ...] = ()) -> RequestInfo:
    return RequestInfo(session_id, frozenset(exclude))


# ---------------------------------------------------------------------- the shared filter
def test_usable_drops_unhealthy_and_excluded_engines_and_keeps_the_order():
    pool = engines(0, 0, 0, 0)
    pool[1].healthy = False
    got = usable(pool, request(exclude=(pool[2].url,)))
    assert [e.url for e in got] == [pool[0].url, pool[3].url]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_policy_picks_an_unhealthy_or_excluded_engine(name):
    pool = engines(5, 0, 0)  # b and c are the least loaded, but b is down and c excluded
    pool[1].healthy = False
    policy = make_policy(name)
    for _ in range(6):  # round robin: every turn
        assert policy.select(pool, request("s", exclude=(pool[2].url,))) is pool[0]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_usable_engine_is_none(name):
    pool = engines(0, 0)
    pool[0].healthy = False
    policy = make_policy(name)
    assert policy.select(pool, request(exclude=(pool[1].url,))) is None
    assert policy.select([], request()) is None


# ---------------------------------------------------------------------- least outstanding
def test_least_outstanding_picks_the_least_loaded_then_the_least_served():
    policy = LeastOutstanding()
    pool = engines(3, 1, 2)
    assert policy.select(pool, request()) is pool[1]
    pool = engines(1, 1, 1, served=(9, 4, 4))
    assert policy.select(pool, request()) is pool[1]  # tie on both: the pool's order


def test_least_outstanding_ignores_sessions():
    policy = LeastOutstanding()
    pool = engines(0, 0)
    assert policy.select(pool, request("s")) is pool[0]
    pool[0].outstanding = 2
    assert policy.select(pool, request("s")) is pool[1]


# ---------------------------------------------------------------------- sticky
def test_sticky_keeps_a_session_on_its_engine_even_when_busier():
    policy = Sticky()
    pool = engines(0, 0)
    first = policy.select(pool, request("conv"))
    assert first is pool[0]
    first.outstanding = 10  # least outstanding would now pick b
    assert policy.select(pool, request("conv")) is first
    assert policy.select(pool, request("other")) is pool[1]  # a new session goes to the least loaded
    assert policy.select(pool, request()) is pool[1]  # so does a request without a session


def test_sticky_moves_a_session_when_its_engine_is_down_or_excluded_and_stays_moved():
    policy = Sticky()
    pool = engines(0, 0, 0)
    assert policy.select(pool, request("conv")) is pool[0]
    pool[0].healthy = False
    pool[1].outstanding = 1
    assert policy.select(pool, request("conv")) is pool[2]
    pool[0].healthy = True  # back, but the session's prefix is now cached on c
    assert policy.select(pool, request("conv")) is pool[2]
    assert policy.select(pool, request("conv", exclude=(pool[2].url,))) is pool[0]  # a retry elsewhere


def test_sticky_forgets_sessions_of_a_removed_engine():
    policy = Sticky()
    pool = engines(0, 0)
    assert policy.select(pool, request("conv")) is pool[0]
    pool[0].outstanding = 5  # pinned, a would still be chosen
    policy.on_removed(pool[0].url)
    assert policy.select(pool, request("conv")) is pool[1]  # not pinned any more: least loaded
    assert policy.sessions == {"conv": pool[1].url}


# ---------------------------------------------------------------------- round robin
def test_round_robin_takes_usable_engines_in_turn_whatever_their_load():
    policy = RoundRobin()
    pool = engines(9, 0, 0)
    assert [policy.select(pool, request()).url for _ in range(6)] == [e.url for e in pool] * 2
    pool[1].healthy = False
    picks = [policy.select(pool, request()).url for _ in range(4)]
    assert sorted(picks) == sorted([pool[0].url, pool[2].url] * 2) and picks[0] != picks[1]


# ---------------------------------------------------------------------- factory
def test_factory_maps_names_to_fresh_policies_and_refuses_unknown_names():
    assert isinstance(make_policy("least_outstanding"), LeastOutstanding)
    assert isinstance(make_policy("round_robin"), RoundRobin)
    assert isinstance(make_policy("sticky"), Sticky)
    assert make_policy("sticky") is not make_policy("sticky")  # policies keep per-pool state
    for name, policy in ((n, make_policy(n)) for n in POLICIES):
        assert isinstance(policy, RoutingPolicy) and policy.name == name
    with pytest.raises(ValueError, match="least_outstanding, round_robin, sticky") as err:
        make_policy("fastest")
    assert "'fastest'" in str(err.value)


def test_the_default_is_sticky_over_least_outstanding():
    assert DEFAULT_POLICY == "sticky" and GatewaySettings().routing_policy == "sticky"
    assert isinstance(EnginePool(client=None).policy, Sticky)


# ---------------------------------------------------------------------- the pool and the settings
def test_pool_select_delegates_to_its_policy_and_raises_when_none_is_usable():
    pool = EnginePool(client=None, policy=RoundRobin())
    for url in ("http://a:1", "http://b:1"):
        pool.add(url).healthy = True
    assert [pool.select().url for _ in range(3)] == ["http://a:1", "http://b:1", "http://a:1"]
    assert pool.select(exclude={"http://a:1"}).url == "http://b:1"
    with pytest.raises(NoEngineAvailable, match="no healthy engine"):
        pool.select(exclude={"http://a:1", "http://b:1"})


def test_pool_default_keeps_sessions_sticky_and_removing_an_engine_unpins_them():
    pool = EnginePool(client=None)
    a, b = pool.add("http://a:1"), pool.add("http://b:1")
    a.healthy = b.healthy = True
    assert pool.select("conv") is a
    a.outstanding = 3
    assert pool.select("conv") is a and pool.select("new") is b
    pool.remove("http://a:1")
    assert pool.select("conv") is b


def test_settings_read_the_policy_from_flag_then_environment_and_refuse_unknown_names(monkeypatch):
    monkeypatch.delenv("BEBOP_ROUTING_POLICY", raising=False)
    assert GatewaySettings.from_env().routing_policy == "sticky"
    assert GatewaySettings.from_env(routing_policy=None).routing_policy == "sticky"  # flag not given
    monkeypatch.setenv("BEBOP_ROUTING_POLICY", "round_robin")
    assert GatewaySettings.from_env().routing_policy == "round_robin"
    assert GatewaySettings.from_env(routing_policy="least_outstanding").routing_policy == "least_outstanding"
    monkeypatch.setenv("BEBOP_ROUTING_POLICY", "random")
    with pytest.raises(ValueError, match="unknown routing policy 'random'"):
        GatewaySettings.from_env()


def test_the_cli_flag_passes_the_policy_through_and_an_unknown_one_fails_at_start(monkeypatch, caplog):
    from bebop.cli.main import build_parser

    monkeypatch.delenv("BEBOP_ROUTING_POLICY", raising=False)
    args = build_parser().parse_args(["serve", "--routing-policy", "nope"])
    assert args.routing_policy == "nope"
    assert args.func(args) == 2  # refused while reading the settings, before any engine starts
    assert "unknown routing policy 'nope'" in caplog.text
    assert build_parser().parse_args(["serve"]).routing_policy is None  # the settings' default applies
