"""The weight updater's state machine, in process: stage, commit, discard, refuse; the serving
weights change only on a swap, and a refused update leaves them as they were."""

from concurrent.futures import Future

import pytest
import torch

from bebop.service.engine.metrics import EngineMetrics
from bebop.service.engine.protocol import DiskUpdate, DistributedUpdate
from bebop.service.engine.weight_update import WeightUpdater


class InlineScheduler:
    """Runs ``call``s at once (the real one runs them between two steps on its thread)."""

    def __init__(self):
        self.weight_version = "v0"
        self.aborted: list[str] = []

    def call(self, fn) -> Future:
        fut: Future = Future()
        fut.set_result(fn())
        return fut

    def abort(self, rid, message="aborted"):
        self.aborted.append(message)
        return 0


class ScriptedReceiver:
    """Hands back the next state dict, or raises ValueError for None (a push that failed validation)."""

    def __init__(self, states):
        self.states = list(states)

    def receive(self, names, dtypes, shapes, group_name, model):
        state = self.states.pop(0)
        if state is None:
            raise ValueError("model.norm.weight holds NaN or Inf")
        return state


def push(**kw) -> DistributedUpdate:
    fields = {"names": ["weight"], "dtypes": ["float32"], "shapes": [[2, 3]], "group_name": "g"}
    fields.update({"weight_version": None, "abort_all": False, "stage": False, **kw})
    return DistributedUpdate(**fields)


@pytest.fixture
def updater(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)  # weight [2, 3]
    ones = {"weight": torch.ones(2, 3)}
    twos = {"weight": torch.full((2, 3), 2.0)}
    receiver = ScriptedReceiver([ones, twos, None])
    return WeightUpdater(model, InlineScheduler(), EngineMetrics(), str(tmp_path), receiver=receiver)


def weight(u: WeightUpdater) -> torch.Tensor:
    return u.model.weight.detach()


def test_staged_weights_serve_only_after_commit(updater):
    before = weight(updater).clone()
    staged = updater.update_from_distributed(push(stage=True, weight_version="v1"))
    assert staged == {"success": True, "staged": True, "message": "weights validated and staged"}
    assert torch.equal(weight(updater), before) and updater.version == "v0"
    done = updater.commit_staged(abort_all=True)
    assert done == {"success": True, "message": "weights updated", "weight_version": "v1"}
    assert torch.equal(weight(updater), torch.ones(2, 3))
    assert updater.scheduler.aborted == ["aborted for a weight update"]
    assert updater.commit_staged(abort_all=False) == {
        "success": False,
        "message": "no staged weights to commit",
    }


def test_discard_leaves_the_old_weights_and_a_refused_push_changes_nothing(updater):
    updater.update_from_distributed(push(stage=True))
    assert updater.discard_staged() == {"success": True, "discarded": True}
    assert updater.discard_staged() == {"success": True, "discarded": False}
    assert updater.update_from_distributed(push(weight_version="v2"))["success"]  # twos, swapped at once
    assert torch.equal(weight(updater), torch.full((2, 3), 2.0)) and updater.version == "v2"
    refused = updater.update_from_distributed(push(weight_version="v3"))
    assert not refused["success"] and "old weights still serving" in refused["message"]
    assert torch.equal(weight(updater), torch.full((2, 3), 2.0)) and updater.version == "v2"


def test_checkpoints_outside_the_roots_are_refused(updater, tmp_path):
    for path in ("/etc", str(tmp_path / ".." / "elsewhere"), "a\x00b"):
        result = updater.update_from_disk(DiskUpdate(path, "x", abort_all=False, stage=False))
        assert not result["success"], path
    missing = updater.update_from_disk(DiskUpdate(str(tmp_path / "nothing"), "x", False, False))
    assert "checkpoint refused, old weights still serving" in missing["message"]
    assert updater.version == "v0"


def test_one_session_at_a_time_and_versions_by_name(updater):
    assert updater.open_session("all") and not updater.open_session("target")
    assert updater.close_session() and not updater.close_session()
    updater.set_version("renamed", abort_all=True).result()
    assert updater.version == "renamed" and updater.scheduler.aborted == [
        "aborted for a weight version update"
    ]
