"""Dense Qwen3 with Bebop's ``mtp.*`` head as an SGLang NEXTN draft model.

SGLang 0.5.23 has MTP draft rules for Qwen3-Next, Qwen3-MoE, Qwen3.5, DeepSeek and MiMo, none for
dense ``Qwen3ForCausalLM`` (sglang/srt/configs/model_config.py:1010-1100), and dense Qwen3's
``load_weights`` would crash on ``mtp.*`` names (models/qwen3.py:737-746 maps ``q_proj`` inside
``mtp.layers.0.self_attn.q_proj`` to a parameter that does not exist). The plugin:

- routes a dense Qwen3 draft that declares ``num_nextn_predict_layers`` to ``DRAFT_ARCH`` (an AFTER
  hook on ``ModelConfig._config_draft_model``) and registers the class below under that name;
- makes the target skip ``mtp.*`` names, on load and on every weight update (AROUND
  ``Qwen3ForCausalLM.load_weights``; updates from disk, tensors and distributed all go through it);
- keeps ``mtp.safetensors`` (what ``bebop train-mtp`` writes beside a Hugging Face checkpoint) when
  a sharded checkpoint's index would filter it out (AFTER ``filter_duplicate_safetensors_files``,
  model_loader/weight_utils.py:757).

The draft class follows SGLang's ``Qwen3MoeForCausalLMMTP`` (models/qwen3_moe_mtp.py) with the dense
Qwen3 decoder: ``fc([pre_fc_norm_embedding(embed(token)), pre_fc_norm_hidden(h)])``, one decoder
layer, ``norm``, the shared ``lm_head``: the layer of service/model/mtp.py, name for name.
One difference remains: SGLang's EAGLE loop feeds the next draft step the hidden state the logits
processor saw, which is after ``norm``; Bebop's head was trained recursing on the state before it.
Depth 1 is exact; deeper drafts see a renormalised h and may be accepted less often. Sampling stays
exact either way (rejection sampling is lossless for any draft law).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import torch

logger = logging.getLogger(__name__)

DRAFT_ARCH = "BebopQwen3ForCausalLMMTP"
TARGET_ARCH = "Qwen3ForCausalLM"
MTP_PREFIX = "mtp."
MTP_SIDE_FILE = "mtp.safetensors"
# After SGLang resolves the NEXTN alias the algorithm reads EAGLE (speculative_hook.py:1211).
MTP_DRAFT_ALGORITHMS = ("NEXTN", "EAGLE")
# The draft keeps the shared embedding and head (tied or not); everything else is the target's.
SHARED_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def draft_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The draft's share of a checkpoint, renamed to the draft module's parameters:
    ``mtp.layers.i.*`` -> ``model.layers.i.*``, ``mtp.norm`` -> ``model.norm``, other ``mtp.*`` lose
    the prefix (fc, pre_fc_norm_*); the shared embedding and head pass; target layers are dropped."""
    for name, tensor in weights:
        if name.startswith(MTP_PREFIX + "layers.") or name.startswith(MTP_PREFIX + "norm."):
            yield "model." + name[len(MTP_PREFIX) :], tensor
        elif name.startswith(MTP_PREFIX):
            yield name[len(MTP_PREFIX) :], tensor
        elif name in SHARED_NAMES:
            yield name, tensor


def target_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The target's share: every name but ``mtp.*``."""
    return ((name, tensor) for name, tensor in weights if not name.startswith(MTP_PREFIX))


# ----------------------------------------------------------------------------- hooks
def around_target_load_weights(original, model, weights, *args, **kwargs):
    """AROUND ``Qwen3ForCausalLM.load_weights``: the target never sees ``mtp.*`` names. The draft
    class (a subclass) renames its weights first, so they pass through unchanged."""
    return original(model, target_weights(weights), *args, **kwargs)


def after_config_draft_model(result, model_config, *args, **kwargs):
    """AFTER ``ModelConfig._config_draft_model``: a dense Qwen3 MTP draft becomes ``DRAFT_ARCH``."""
    hf_config = model_config.hf_config
    archs = getattr(hf_config, "architectures", None) or []
    if (
        getattr(model_config, "is_draft_model", False)
        and archs[:1] == [TARGET_ARCH]
        and (getattr(model_config, "speculative_algorithm", None) or "").upper() in MTP_DRAFT_ALGORITHMS
        and (getattr(hf_config, "num_nextn_predict_layers", 0) or 0) > 0
    ):
        register_draft_class()
        hf_config.architectures[0] = DRAFT_ARCH
        text_config = getattr(model_config, "hf_text_config", None)
        if text_config is not None and text_config is not hf_config:
            text_config.architectures = list(hf_config.architectures)
        logger.info("bebop plugin: dense Qwen3 MTP draft -> %s", DRAFT_ARCH)
    return result


def after_filter_safetensors(
    result: list[str], hf_weights_files, hf_folder: str, *args, **kwargs
) -> list[str]:
    """AFTER ``filter_duplicate_safetensors_files``: keep ``mtp.safetensors`` beside a sharded checkpoint."""
    side = os.path.join(hf_folder, MTP_SIDE_FILE)
    if os.path.isfile(side) and side not in result and side in hf_weights_files:
        return [*result, side]
    return result


# ----------------------------------------------------------------------------- the draft class
_draft_class = None


def register_draft_class() -> type:
    """Build the draft class (imports SGLang's Qwen3) and register it with SGLang's model registry."""
    global _draft_class
    if _draft_class is None:
        from sglang.srt.models.registry import ModelRegistry

        _draft_class = _build_draft_class()
        ModelRegistry.models[DRAFT_ARCH] = _draft_class
    return _draft_class


def _build_draft_class() -> type:
    from sglang.srt.layers.layernorm import RMSNorm
    from sglang.srt.layers.logits_processor import LogitsProcessor
    from sglang.srt.layers.vocab_parallel_embedding import ParallelLMHead
    from sglang.srt.models.qwen3 import Qwen3ForCausalLM, Qwen3Model
    from sglang.srt.runtime_context import get_parallel
    from sglang.srt.utils import add_prefix
    from torch import nn

    class BebopQwen3ForCausalLMMTP(Qwen3ForCausalLM):
        """Bebop's MTP layer on a dense Qwen3 backbone, as SGLang's NEXTN draft."""

        def __init__(self, config, quant_config=None, prefix: str = "") -> None:
            nn.Module.__init__(self)
            config.num_hidden_layers = config.num_nextn_predict_layers  # the MTP layer(s) only
            self.config = config
            self.quant_config = quant_config
            self.pp_group = get_parallel().pp_group
            self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
            self.pre_fc_norm_embedding = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.pre_fc_norm_hidden = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.model = Qwen3Model(config, quant_config, prefix=add_prefix("model", prefix))
            self.lm_head = ParallelLMHead(
                config.vocab_size,
                config.hidden_size,
                quant_config=quant_config,
                prefix=add_prefix("lm_head", prefix),
            )
            self.logits_processor = LogitsProcessor(config)
            self.capture_aux_hidden_states = False

        @torch.no_grad()
        def forward(self, input_ids, positions, forward_batch, input_embeds=None, **kwargs):
            if input_embeds is None:
                input_embeds = self.model.embed_tokens(input_ids)
            hidden = forward_batch.spec_info.hidden_states  # [T, C] the target's (or last draft's) h
            if not forward_batch.forward_mode.is_idle():
                input_embeds = self.pre_fc_norm_embedding(input_embeds)
                hidden = self.pre_fc_norm_hidden(hidden)
            x = self.fc(torch.cat((input_embeds, hidden), dim=-1))  # [T, 2C] -> [T, C]
            x = self.model(input_ids, positions, forward_batch, x)  # the MTP layer, then norm
            return self.logits_processor(input_ids, x, self.lm_head, forward_batch)

        def load_weights(self, weights, *args, **kwargs):
            return super().load_weights(draft_weights(weights), *args, **kwargs)

    return BebopQwen3ForCausalLMMTP
