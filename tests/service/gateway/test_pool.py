"""The engine pool against FAKE engines in process (``fake_engine.FakeEngine``): health checks, the
circuit breaker, DNS discovery, and the forwarder's retries and per-engine in-flight counts."""

import asyncio

import pytest

from bebop.service.gateway.inflight import Admission, Overloaded, Ticket, hold
from bebop.service.gateway.pool import EnginePool, EngineState, NoEngineAvailable
from bebop.service.gateway.rollouts import EngineRejected, Forwarder
from bebop.service.gateway.routing import LeastOutstanding
from bebop.service.gateway.upstream import Upstream
from tests.service.gateway.fake_engine import FakeEngine

GENERATE = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 3}}


def run(test):
    """Run ``test(pool)`` in a fresh event loop with a pool whose client is closed afterwards."""

    async def main():
        pool = EnginePool(Upstream(10.0), failures_to_open=3, health_timeout_s=2.0)
        try:
            return await test(pool)
        finally:
            await pool.client.close()

    return asyncio.run(main())


async def closed_port_url() -> str:
    """A loopback url nobody listens on (a fake that was stopped)."""
    async with FakeEngine() as engine:
        url = engine.url
    return url


# ---------------------------------------------------------------------- health checks
def test_a_health_check_reads_the_engines_version_and_staging_support():
    async def test(pool):
        async with FakeEngine(version="step-7", model_path="/ckpt/7", can_stage=False) as fake:
            engine = pool.add(fake.url + "/")  # a trailing slash is the same engine
            assert not engine.healthy  # unknown until checked
            await pool.check(engine)
            assert engine.healthy and engine.url == fake.url
            assert (engine.weight_version, engine.model_path, engine.can_stage) == (
                "step-7",
                "/ckpt/7",
                False,
            )
            assert engine.last_check > 0

    run(test)


def test_an_engine_whose_health_fails_or_that_is_gone_is_unhealthy():
    async def test(pool):
        async with FakeEngine() as up, FakeEngine() as sick:
            sick.healthy = False
            for url in (up.url, sick.url, await closed_port_url()):
                pool.add(url)
            await pool.check_all()
            assert [e.url for e in pool.healthy()] == [up.url]
            sick.healthy = True
            await pool.check_all()
            assert {e.url for e in pool.healthy()} == {up.url, sick.url}

    run(test)


def test_bad_engine_urls_are_refused():
    pool = EnginePool(client=None)
    with pytest.raises(ValueError, match="http:// or https://"):
        pool.add("ftp://engine:1")
    assert pool.engines == {}


# ---------------------------------------------------------------------- circuit breaker
def test_the_breaker_opens_after_failures_to_open_failures_in_a_row():
    pool = EnginePool(client=None, failures_to_open=3)
    engine = pool.add("http://a:1")
    engine.healthy = True
    pool.record_failure(engine)
    pool.record_failure(engine)
    pool.record_success(engine)  # a success in between: the count starts again
    assert engine.consecutive_failures == 0 and engine.served == 1
    pool.record_failure(engine)
    pool.record_failure(engine)
    assert engine.healthy  # two in a row: still in rotation
    pool.record_failure(engine)
    assert not engine.healthy and engine.consecutive_failures == 3
    with pytest.raises(NoEngineAvailable):
        pool.select()


def test_an_open_breaker_closes_when_a_health_check_passes():
    async def test(pool):
        async with FakeEngine() as fake:
            engine = pool.add(fake.url)
            await pool.check(engine)
            for _ in range(pool.failures_to_open):
                pool.record_failure(engine)
            assert not engine.healthy
            await pool.check(engine)  # the engine answers again: back in rotation, count reset
            assert engine.healthy and engine.consecutive_failures == 0
            assert pool.select() is engine

    run(test)


def test_engine_failures_open_the_breaker_and_requests_move_to_the_other_engine():
    async def test(pool):
        pool.policy = LeastOutstanding()
        forwarder = Forwarder(pool, timeout_s=10.0)
        async with FakeEngine() as broken, FakeEngine() as good:
            broken.generate_status = 500
            first, second = pool.add(broken.url), pool.add(good.url)
            await pool.check_all()
            first.served = -100  # least outstanding tries the broken engine first every time
            for i in range(pool.failures_to_open):
                out = await forwarder.generate(GENERATE)  # retried on the good engine: nothing lost
                assert out["output_ids"] == [7, 7, 7]
                assert first.consecutive_failures == i + 1
            assert not first.healthy and second.healthy
            assert broken.paths() == ["/generate"] * pool.failures_to_open
            await forwarder.generate(GENERATE)
            assert len(broken.calls) == pool.failures_to_open  # out of rotation: not tried again
            assert first.outstanding == second.outstanding == 0
            assert second.served == pool.failures_to_open + 1

    run(test)


def test_a_4xx_is_the_requests_fault_and_never_opens_the_breaker():
    async def test(pool):
        forwarder = Forwarder(pool, timeout_s=10.0)
        async with FakeEngine() as fake:
            fake.generate_status = 400
            engine = pool.add(fake.url)
            await pool.check(engine)
            for _ in range(pool.failures_to_open + 1):
                with pytest.raises(EngineRejected, match="fake failure 400"):
                    await forwarder.generate(GENERATE)
            assert engine.healthy and engine.consecutive_failures == 0 and engine.outstanding == 0

    run(test)


def test_no_engine_answering_is_no_engine_available():
    async def test(pool):
        forwarder = Forwarder(pool, timeout_s=10.0)
        engine = pool.add(await closed_port_url())
        engine.healthy = True  # the health loop has not noticed yet
        with pytest.raises(NoEngineAvailable, match="no healthy engine could serve"):
            await forwarder.generate(GENERATE)
        assert engine.consecutive_failures == 1 and engine.outstanding == 0

    run(test)


# ---------------------------------------------------------------------- in-flight accounting
def test_a_stream_holds_its_engine_until_it_ends_and_a_cancelled_call_releases_it():
    async def test(pool):
        forwarder = Forwarder(pool, timeout_s=10.0)
        async with FakeEngine() as fake:
            engine = pool.add(fake.url)
            await pool.check(engine)
            stream = await forwarder.stream(GENERATE)
            assert engine.outstanding == 1  # answered, still being relayed
            assert b"output_ids" in b"".join([chunk async for chunk in stream])
            assert engine.outstanding == 0 and engine.served == 1

            started = asyncio.Event()
            original = pool.client.post

            async def slow_post(*args, **kwargs):
                started.set()
                await asyncio.sleep(30)
                return await original(*args, **kwargs)

            pool.client.post = slow_post
            call = asyncio.ensure_future(forwarder.generate(GENERATE))
            await started.wait()
            assert engine.outstanding == 1
            call.cancel()  # a client that went away
            with pytest.raises(asyncio.CancelledError):
                await call
            assert engine.outstanding == 0

    run(test)


def test_tickets_release_once_and_admission_is_all_or_nothing():
    class Gauge:
        value = None

        def set(self, value):
            self.value = value

    gauge = Gauge()
    admission = Admission(limit=4, gauge=gauge)
    with admission.admit(3) as ticket:
        assert admission.count == 3 and gauge.value == 3
        with pytest.raises(Overloaded, match="3 samples in flight; limit 4"):
            admission.admit(2)
        assert admission.count == 3  # a refused request counts nothing
        ticket.release()  # released early (a stream's end), then again by the with block
    assert admission.count == 0 and gauge.value == 0 and ticket.released

    engine = EngineState("http://a:1")
    held = hold(engine)
    assert engine.outstanding == 1
    held.release()
    held.release()
    assert engine.outstanding == 0
    calls = []
    Ticket(lambda: calls.append(1)).release()
    assert calls == [1]


# ---------------------------------------------------------------------- discovery
def test_discovery_follows_dns_and_keeps_the_pool_on_a_resolution_failure():
    async def test(pool):
        async with FakeEngine() as first, FakeEngine() as second:
            port1, port2 = first.url.rsplit(":", 1)[1], second.url.rsplit(":", 1)[1]
            pool.add("http://10.9.9.9:1")  # given by --engine-url: discovery leaves it alone
            await pool.discover([f"localhost:{port1}"])
            assert set(pool.engines) == {"http://10.9.9.9:1", first.url}
            await pool.discover([f"localhost:{port1}", "no-such-host.invalid:1"])
            assert set(pool.engines) == {"http://10.9.9.9:1", first.url}  # a DNS hiccup drops nothing
            await pool.discover([f"localhost:{port2}"])  # the service now resolves elsewhere
            assert set(pool.engines) == {"http://10.9.9.9:1", second.url}
            assert pool.discovered == {second.url}
            await pool.check_all()
            assert [e.url for e in pool.healthy()] == [second.url]

    run(test)


def test_the_health_loop_discovers_and_checks():
    async def test(pool):
        async with FakeEngine() as fake:
            port = fake.url.rsplit(":", 1)[1]
            loop = asyncio.ensure_future(pool.health_loop(0.01, [f"localhost:{port}"]))
            try:
                for _ in range(500):
                    if pool.healthy():
                        break
                    await asyncio.sleep(0.01)
            finally:
                loop.cancel()
            assert [e.url for e in pool.healthy()] == [fake.url]

    run(test)
