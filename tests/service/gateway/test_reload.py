"""The reload coordinator (all-or-nothing weight updates) against FAKE engines in process
(``fake_engine.FakeEngine``): every engine commits or none does, a failure on one engine leaves
the others on the old weights (discarded when staged, rolled back from disk when a stock engine
already swapped), and the error names each engine's outcome."""

import asyncio
from pathlib import Path

import pytest

from bebop.service.gateway.pool import EnginePool
from bebop.service.gateway.reload import ReloadCoordinator, ReloadFailed
from bebop.service.gateway.upstream import Upstream
from tests.service.gateway.fake_engine import FakeEngine

ROOT = Path("/ckpt")  # the operator's allowed weight root; the fakes never read the disk
NEW = str(ROOT / "v1")


def run(test, *fakes: FakeEngine):
    """Start ``fakes``, put them in a checked pool, and run ``test(coordinator)``."""

    async def main():
        pool = EnginePool(Upstream(10.0))
        try:
            for fake in fakes:
                await fake.__aenter__()
                pool.add(fake.url)
            await pool.check_all()
            assert len(pool.healthy()) == len(fakes)
            return await test(ReloadCoordinator(pool, [ROOT], timeout_s=10.0, info_timeout_s=5.0))
        finally:
            for fake in fakes:
                await fake.stop()
            await pool.client.close()

    return asyncio.run(main())


def test_a_reload_stages_everywhere_then_commits_everywhere():
    a, b = FakeEngine(), FakeEngine()

    async def test(coordinator):
        result = await coordinator.reload(NEW, "v1", "retract", continue_aborted=True)
        assert result["outcome"] == "success" and result["source"] == "disk"
        assert set(result["engines"]) == {a.url, b.url}
        for fake in (a, b):
            assert fake.paths() == [
                "/pause_generation",
                "/update_weights_from_disk",
                "/commit_staged_weights",
                "/settle_weights",  # the copy kept at commit is released once all committed
                "/continue_generation",
            ]
            assert fake.calls[0][1] == {"mode": "retract"}
            stage_id = fake.calls[1][1].pop("stage_id")  # this reload's name, on every call that acts
            assert fake.calls[1][1] == {"model_path": NEW, "weight_version": "v1", "stage": True}
            assert fake.calls[2][1] == fake.calls[3][1] == {"stage_id": stage_id}  # commit, settle
            assert (fake.version, fake.model_path, fake.paused) == ("v1", NEW, False)
        pool = coordinator.pool
        assert {e.weight_version for e in pool.engines.values()} == {"v1"}
        assert coordinator.checkpoints == {a.url: NEW, b.url: NEW}
        assert coordinator.continue_aborted and coordinator.last is result

    run(test, a, b)


def test_one_engine_failing_to_stage_changes_nothing_anywhere():
    good, bad = FakeEngine(), FakeEngine()
    bad.fail_update = "model.safetensors: header too short"

    async def test(coordinator):
        with pytest.raises(ReloadFailed, match="all engines serve the old weights") as err:
            await coordinator.reload(NEW, "v1", "abort", continue_aborted=False)
        detail = err.value.engines
        assert detail[good.url]["updated"] is True and detail[bad.url]["updated"] is False
        assert "header too short" in detail[bad.url]["message"]
        assert detail[good.url]["serving"] == detail[bad.url]["serving"] == "v0"
        assert "/commit_staged_weights" not in good.paths() + bad.paths()  # nobody committed
        assert "/discard_staged_weights" in good.paths()  # the staged copy is dropped
        assert good.staged is None
        for fake in (good, bad):
            assert (fake.version, fake.paused) == ("v0", False)  # old weights, serving again
        assert coordinator.last["outcome"] == "rolled_back"
        assert {e.weight_version for e in coordinator.pool.engines.values()} == {"v0"}

    run(test, good, bad)


def test_a_stock_engine_that_already_swapped_is_rolled_back_from_disk():
    stock = FakeEngine(version="v0", model_path=str(ROOT / "v0"), can_stage=False)
    bad = FakeEngine()
    bad.fail_update = "disk full"

    async def test(coordinator):
        with pytest.raises(ReloadFailed) as err:
            await coordinator.reload(NEW, "v1", "retract", continue_aborted=False)
        updates = [body for path, body in stock.calls if path == "/update_weights_from_disk"]
        assert updates == [
            {"model_path": NEW, "weight_version": "v1"},  # no "stage": a stock SGLang server
            {"model_path": str(ROOT / "v0"), "weight_version": "v0"},  # the rollback
        ]
        assert (stock.version, stock.model_path) == ("v0", str(ROOT / "v0"))
        detail = err.value.engines
        assert detail[stock.url]["rolled_back"] is True and detail[stock.url]["serving"] == "v0"
        assert coordinator.last["outcome"] == "rolled_back"

    run(test, stock, bad)


def test_an_engine_that_cannot_pause_stops_the_reload_before_any_update():
    a, b = FakeEngine(), FakeEngine()
    b.fail_pause = True

    async def test(coordinator):
        with pytest.raises(ReloadFailed, match="could not be paused; nothing changed") as err:
            await coordinator.reload(NEW, "v1", "retract", continue_aborted=False)
        assert err.value.engines[b.url]["updated"] is False
        for fake in (a, b):
            assert "/update_weights_from_disk" not in fake.paths()
            assert fake.paths()[-1] == "/continue_generation"  # resumed either way
        assert coordinator.last["outcome"] == "not_paused"

    run(test, a, b)


def test_an_engine_reporting_the_wrong_version_after_commit_fails_the_reload():
    a, liar = FakeEngine(), FakeEngine()
    liar.report_version = "v0"  # committed, but /model_info still says the old version

    async def test(coordinator):
        with pytest.raises(ReloadFailed) as err:
            await coordinator.reload(NEW, "v1", "retract", continue_aborted=False)
        assert "reports version 'v0'" in err.value.engines[liar.url]["message"]
        assert coordinator.last["outcome"] == "rolled_back"
        assert a.version == "v0"  # committed, then rolled back from its checkpoint on disk
        assert coordinator.pool.engines[a.url].weight_version == "v0"  # the pool never took it

    run(test, a, liar)


def test_paths_outside_the_allowed_roots_are_refused_before_any_engine_call():
    a = FakeEngine()

    async def test(coordinator):
        with pytest.raises(PermissionError, match="outside the allowed weight roots"):
            await coordinator.reload("/etc", "v1", "retract", continue_aborted=False)
        with pytest.raises(ValueError, match="NUL"):
            await coordinator.reload("/ckpt/\x00", "v1", "retract", continue_aborted=False)
        assert a.calls == []

    run(test, a)


def test_a_failed_commit_rolls_back_from_the_kept_weights_without_the_old_checkpoint():
    """The old checkpoint directory is gone (rotated away: any read of it fails); one engine's commit
    fails after the other's succeeded. The committed engine goes back to the weights it kept at
    commit, never touching the disk, and the answer states what each engine serves, checked."""
    committed, failing = FakeEngine(), FakeEngine()
    failing.fail_commit = "CUDA error: out of memory"

    async def test(coordinator):
        committed.gone.add("/ckpt/v0")  # rotated away: reloading it fails
        with pytest.raises(ReloadFailed, match="all engines serve the old weights") as err:
            await coordinator.reload(NEW, "v1", "retract", continue_aborted=False)
        detail = err.value.engines
        assert detail[committed.url]["rolled_back"] is True
        assert detail[committed.url]["serving"] == detail[failing.url]["serving"] == "v0"
        assert "/rollback_weights" in committed.paths()
        disk_reloads = [c for c in committed.calls if c[0] == "/update_weights_from_disk"]
        assert len(disk_reloads) == 1 and disk_reloads[0][1].get("stage")  # the staging, nothing after
        assert (committed.version, committed.model_path) == ("v0", "/ckpt/v0")
        assert committed.previous is None and not committed.paused
        assert coordinator.last["outcome"] == "rolled_back"

    run(test, committed, failing)


def test_an_engine_without_kept_weights_is_rolled_back_from_its_checkpoint():
    older, failing = FakeEngine(keeps_previous=False), FakeEngine()
    failing.fail_commit = "commit refused"

    async def test(coordinator):
        with pytest.raises(ReloadFailed, match="all engines serve the old weights") as err:
            await coordinator.reload(NEW, "v1", "retract", continue_aborted=False)
        assert err.value.engines[older.url]["rolled_back"] is True
        reloads = [c[1] for c in older.calls if c[0] == "/update_weights_from_disk"]
        assert reloads[-1] == {"model_path": "/ckpt/v0", "weight_version": "v0"}  # the fallback
        assert older.version == "v0"

    run(test, older, failing)


def test_a_reload_from_disk_is_not_held_up_by_a_pending_group_rendezvous():
    """Joining the trainer's group blocks until the trainer joins; a reload from disk meanwhile goes
    through (the group has its own lock), and the join still completes afterwards."""
    a = FakeEngine()

    async def test(coordinator):
        layout = await coordinator.group_layout()
        joining = asyncio.create_task(
            coordinator.init_group("127.0.0.1", 29500, layout.world_size, "g", "gloo")
        )
        await asyncio.sleep(0.2)
        assert not joining.done()  # the rendezvous is pending
        result = await asyncio.wait_for(coordinator.reload(NEW, "v1", "retract", False), timeout=5)
        assert result["outcome"] == "success" and a.version == "v1"
        a.joined.set()
        assert (await asyncio.wait_for(joining, timeout=5))["group_name"] == "g"

    run(test, a)
