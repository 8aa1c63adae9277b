"""The Qwen3 decoder and MTP head: Hugging Face parity, round trips, and train/draft consistency."""

import json

import pytest
import torch

from bebop.model import ModelConfig, Qwen3Model, load_model, save_model
from bebop.model.mtp import mtp_chain_logits

TINY = ModelConfig(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    num_mtp_layers=1,
    eos_token_id=0,
)


def _model(cfg: ModelConfig = TINY, seed: int = 0) -> Qwen3Model:
    torch.manual_seed(seed)
    model = Qwen3Model(cfg)
    with torch.no_grad():  # away from the init so norms and biases matter too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_loads_our_checkpoint_with_the_same_logits(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(**{**TINY.__dict__, "tie_word_embeddings": tied, "extra": {}})
    model = _model(cfg)
    save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 17))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(input_ids=ids).logits
    # Same float32 operations up to kernel order: agreement to 1e-5 absolute on logits of size ~1.
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_exact_and_keeps_the_mtp_head(tmp_path):
    model = _model()
    save_model(model, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "qwen3" and raw["num_nextn_predict_layers"] == 1
    loaded = load_model(tmp_path, strict_mtp=True)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_load_refuses_a_checkpoint_without_backbone_weights(tmp_path):
    from safetensors.torch import save_file

    save_model(_model(), tmp_path)
    save_file({"mtp.fc.weight": torch.zeros(64, 128)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks weights"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="qwen3"):
        load_model(tmp_path)


def test_cached_decoding_matches_a_full_forward():
    model = _model()
    ids = torch.randint(0, TINY.vocab_size, (2, 12))
    full = model(ids).logits
    first = model(ids[:, :7])
    mask = torch.ones(2, 1, 5, 12, dtype=torch.bool).tril(7)
    rest = model(ids[:, 7:], torch.arange(7, 12).expand(2, 5), mask, first.cache)
    torch.testing.assert_close(rest.logits, full[:, 7:], atol=1e-5, rtol=1e-5)


def test_training_chains_match_step_by_step_drafting():
    """The parallel teacher-forced chains are what the engine computes when it drafts one token at a
    time over a cache of depth-1 entries for committed tokens."""
    model = _model()
    B, L, S = 2, 11, 3
    ids = torch.randint(0, TINY.vocab_size, (B, L))
    with torch.no_grad():
        out = model(ids)
        chains = mtp_chain_logits(model, ids, out.hidden, S)  # [B, L, S, V]
        i = 5  # chain from position i: depth-1 entries for chains 0..i are committed state
        rope = model.rope(torch.arange(1, i + 2).expand(B, -1))
        step = model.mtp(model.embed(ids[:, 1 : i + 2]), out.hidden[:, : i + 1], rope, model.lm_head)
        torch.testing.assert_close(step.logits[:, i], chains[:, i, 0], atol=1e-5, rtol=1e-5)
        hidden, cache = step.hidden[:, i : i + 1], step.cache
        for k in range(2, S + 1):
            n_keys = cache[0].k.shape[2] + 1
            step = model.mtp(
                model.embed(ids[:, i + k : i + k + 1]), hidden, model.rope(torch.full((B, 1), i + k)),
                model.lm_head, torch.ones(B, 1, 1, n_keys, dtype=torch.bool), cache,
            )  # fmt: skip
            torch.testing.assert_close(step.logits[:, 0], chains[:, i, k - 1], atol=1e-5, rtol=1e-5)
            hidden, cache = step.hidden, step.cache
