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


def test_a_commit_keeps_what_it_replaced_until_settled_and_rollback_restores_it(updater):
    """A pushed update (no checkpoint directory to go back to) is rolled back from the host copy kept at
    commit: weights, version and checkpoint path as they were; a settled reload keeps nothing."""
    before, path = weight(updater).clone(), updater.model_path
    assert updater.roll_back(abort_all=False)["success"] is False  # nothing committed yet
    updater.update_from_distributed(push(stage=True, weight_version="v1"))
    updater.commit_staged(abort_all=False)
    assert updater.retained is not None and updater.retained.state["weight"].device.type == "cpu"
    assert torch.equal(weight(updater), torch.ones(2, 3))
    done = updater.roll_back(abort_all=False)
    assert done["success"] is True and done["weight_version"] == "v0"
    assert torch.equal(weight(updater), before) and updater.model_path == path
    assert updater.roll_back(abort_all=False)["success"] is False  # once
    updater.update_from_distributed(push(stage=True, weight_version="v2"))
    updater.commit_staged(abort_all=False)
    assert updater.settle() == {"success": True, "released": True}
    assert updater.retained is None and updater.roll_back(abort_all=False)["success"] is False
    assert torch.equal(weight(updater), torch.full((2, 3), 2.0)) and updater.version == "v2"


def test_two_reloads_cannot_commit_discard_or_roll_back_each_others_weights(updater):
    """Two gateways reloading the same engine: each names its reload (stage_id), and an engine's one
    staged slot and one kept copy answer only to the reload that filled them."""
    before = weight(updater).clone()
    assert updater.update_from_distributed(push(stage=True, weight_version="a", stage_id="A"))["success"]
    refused = updater.update_from_distributed(push(stage=True, weight_version="b", stage_id="B"))
    assert refused["success"] is False and "another reload (A)" in refused["message"]
    assert updater.commit_staged(abort_all=False, stage_id="B")["success"] is False
    assert updater.discard_staged(stage_id="B") == {"success": True, "discarded": False}
    assert torch.equal(weight(updater), before) and updater.staged.stage_id == "A"
    assert updater.commit_staged(abort_all=False, stage_id="A")["weight_version"] == "a"
    assert updater.roll_back(abort_all=False, stage_id="B")["success"] is False
    assert updater.settle(stage_id="B") == {"success": True, "released": False}
    assert updater.roll_back(abort_all=False, stage_id="A")["success"] is True
    assert torch.equal(weight(updater), before) and updater.version == "v0"


def test_an_abandoned_staged_slot_is_taken_after_it_goes_stale(updater, monkeypatch):
    import bebop.service.engine.weight_update as weight_update

    updater.update_from_distributed(push(stage=True, stage_id="A"))  # its gateway died here
    monkeypatch.setattr(weight_update, "STALE_STAGE_S", 0.0)
    assert updater.update_from_distributed(push(stage=True, stage_id="B"))["success"] is True
    assert updater.staged.stage_id == "B"
