"""MTP head training: chain targets and masks, learning, resumption, Hugging Face backbones."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bebop.training.backbone import MTP_WEIGHTS_FILE, HFBackbone, OwnBackbone, open_backbone
from bebop.training.mtp_train import TrainConfig, chain_mask, chain_targets, train_mtp


def test_chain_targets_and_mask_line_up():
    logits = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    targets = chain_targets(logits, 2)  # [B, L, S, V]
    assert targets[0, 1, 0, 0] == logits[0, 2, 0] and targets[0, 1, 1, 0] == logits[0, 3, 0]
    mask = chain_mask(torch.tensor([5, 3]), 5, 2)
    assert mask[0].tolist() == [[True, True], [True, True], [True, True], [True, False], [False, False]]
    assert mask[1].tolist() == [[True, True], [True, False], [False, False], [False, False], [False, False]]


def _config(model, out, **kw) -> TrainConfig:
    base = {
        "model": str(model),
        "out": str(out),
        "iters": 8,
        "batch_size": 8,
        "max_len": 40,
        "corpus_size": 200,
    }
    return TrainConfig(**{**base, "progress": False, **kw})


def _head(directory) -> dict[str, torch.Tensor]:
    state = load_file(str(directory / "model.safetensors"))
    return {k: v for k, v in state.items() if k.startswith("mtp.")}


@pytest.mark.parametrize("loss", ["ce", "kl", "rkl", "tv", "e2e_tv"])
def test_every_loss_raises_acceptance(quick_model, tmp_path, loss):
    from bebop.training.mtp_train import encode_texts, load_texts, make_batch, mtp_loss

    cfg = _config(quick_model, tmp_path / loss, loss=loss, iters=40, lr=3e-3)
    ids, lengths = make_batch(encode_texts(quick_model, load_texts(cfg), 40)[:32])
    before = mtp_loss(open_backbone(quick_model), ids, lengths, 3, loss)[1]
    after = mtp_loss(open_backbone(train_mtp(cfg)), ids, lengths, 3, loss)[1]
    assert float(after.mean()) > float(before.mean()) + 0.02, (before, after)


def test_resume_continues_where_it_stopped(quick_model, tmp_path):
    straight = train_mtp(_config(quick_model, tmp_path / "straight", iters=6, save_every=3))
    part = _config(quick_model, tmp_path / "resumed", iters=3, save_every=3)
    train_mtp(part)
    resumed = train_mtp(_config(quick_model, tmp_path / "resumed", iters=6, save_every=3, resume=True))
    a, b = _head(straight), _head(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert json.loads((resumed / "mtp_training.json").read_text())["iters"] == 6


def test_trains_a_head_for_a_hugging_face_backbone(quick_model, tmp_path):
    """The demo checkpoint without its head, as a plain transformers qwen3 model."""
    hf_dir = tmp_path / "hf"
    shutil.copytree(quick_model, hf_dir, ignore=shutil.ignore_patterns("heads"))
    raw = json.loads((hf_dir / "config.json").read_text())
    del raw["num_nextn_predict_layers"]
    (hf_dir / "config.json").write_text(json.dumps(raw))
    backbone = open_backbone(hf_dir)
    assert isinstance(backbone, HFBackbone)
    ours = OwnBackbone(__import__("bebop.model", fromlist=["load_model"]).load_model(quick_model))
    ids = torch.randint(0, 300, (2, 9))
    hidden_hf, logits_hf = backbone.states(ids)
    hidden_ours, logits_ours = ours.states(ids)
    torch.testing.assert_close(logits_hf, logits_ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden_hf, hidden_ours, atol=1e-4, rtol=1e-4)

    out = train_mtp(_config(hf_dir, hf_dir, iters=4))
    assert (out / MTP_WEIGHTS_FILE).is_file()
    reopened = open_backbone(hf_dir)
    written = load_file(str(out / MTP_WEIGHTS_FILE))
    for name, value in reopened.mtp.state_dict().items():
        assert torch.equal(value, written[f"mtp.{name}"])


def test_unknown_loss_is_refused(quick_model, tmp_path):
    with pytest.raises(ValueError, match="loss must be one of"):
        train_mtp(_config(quick_model, tmp_path, loss="mse"))
