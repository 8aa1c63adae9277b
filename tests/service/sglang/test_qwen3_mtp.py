"""Dense Qwen3 MTP drafts inside SGLang: weight names, the draft rule, the target skipping mtp.*.

The name mapping runs on the shipped demo checkpoint here; the hooks on SGLang's own
``_config_draft_model``, model registry, ``Qwen3ForCausalLM.load_weights`` and safetensors index
filter run in sglang_probe.py (``mtp_plumbing``); the draft class itself is built by SGLang's layers
in a world-size-1 gloo group on CPU and loads the demo checkpoint (``draft_on_cpu``).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bebop.model.demo_path import demo_model_dir
from bebop.service.sglang.qwen3_mtp import DRAFT_ARCH, draft_weights, target_weights


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return load_file(str(demo_model_dir() / "model.safetensors"))


def expected_draft_name(name: str) -> str:
    rest = name.removeprefix("mtp.")
    return "model." + rest if rest.startswith(("layers.", "norm.")) else rest


def test_every_mtp_tensor_lands_in_the_draft_unchanged(checkpoint):
    draft = dict(draft_weights(checkpoint.items()))
    mtp_names = [n for n in checkpoint if n.startswith("mtp.")]
    assert mtp_names, "the demo checkpoint carries an MTP head"
    for name in mtp_names:
        assert draft[expected_draft_name(name)] is checkpoint[name]
    shared = {"model.embed_tokens.weight"} | ({"lm_head.weight"} & checkpoint.keys())
    assert set(draft) == {expected_draft_name(n) for n in mtp_names} | shared
    # The draft's own names: SGLang's Qwen3 layer names, one layer, its norm, fc and the two pre-norms.
    assert {
        "fc.weight",
        "pre_fc_norm_embedding.weight",
        "pre_fc_norm_hidden.weight",
        "model.norm.weight",
    } <= set(draft)
    assert all(not n.startswith("model.layers.") or n.startswith("model.layers.0.") for n in draft)


def test_the_target_never_sees_mtp_names(checkpoint):
    target = dict(target_weights(checkpoint.items()))
    assert set(target) == {n for n in checkpoint if not n.startswith("mtp.")}


@pytest.mark.sglang
def test_dense_qwen3_draft_is_routed_to_bebops_class(probe_result):
    mtp = probe_result["mtp"]
    assert "draft_arch_error" not in mtp, mtp.get("draft_arch_error")  # SGLang's own rule ran first
    assert mtp["draft_arch"] == DRAFT_ARCH
    assert mtp["draft_class"] == [DRAFT_ARCH, DRAFT_ARCH, True]  # a Qwen3ForCausalLM subclass
    assert mtp["target_arch"] == "Qwen3ForCausalLM"  # the target model keeps its class


@pytest.mark.sglang
def test_target_load_weights_skips_mtp_names(probe_result):
    # Without the hook SGLang's Qwen3ForCausalLM.load_weights raises KeyError on mtp.*.q_proj.
    assert probe_result["mtp"]["target_norm_loaded"]


@pytest.mark.sglang
def test_mtp_safetensors_beside_a_sharded_checkpoint_is_kept(probe_result):
    assert probe_result["mtp"]["kept_files"] == ["model-00001-of-00001.safetensors", "mtp.safetensors"]


@pytest.mark.sglang
def test_the_draft_class_built_by_sglang_on_cpu_takes_every_mtp_tensor_unchanged(probe_result, checkpoint):
    """SGLang's own parallel layers (fused qkv_proj and gate_up_proj included), its runtime context
    and model-parallel state in a world-size-1 gloo group, SGLang's load_weights path."""
    draft = probe_result["draft_on_cpu"]
    assert "error" not in draft, draft
    assert draft["class"] == DRAFT_ARCH and draft["layers"] == 1
    assert set(draft["landed"]) == {n for n in checkpoint if n.startswith("mtp.")}
    assert all(draft["landed"].values()), {n: ok for n, ok in draft["landed"].items() if not ok}
    assert draft["embed_equal"]
