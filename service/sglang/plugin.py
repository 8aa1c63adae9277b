"""The ``sglang.srt.plugins`` entry point: ``bebop = bebop.service.sglang.plugin:load``.

``load()`` runs once per SGLang process, before ``HookRegistry.apply_hooks()``
(sglang/srt/plugins/__init__.py:121-141). It only registers hooks; SGLang applies them.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# SGLang's chain kernel, by its defining module. REPLACE rebinds the module attribute and every
# stale ``from ... import`` copy: verify_sampling.py:18, eagle_utils.py:17-20, uno_utils.py:10,
# dspark_accept.py:28 (sglang/srt/plugins/hook_registry.py:290-303).
KERNEL_TARGET = "sglang.kernels.ops.speculative.reject_sampling.chain_speculative_sampling_triton"
# Statistics (stats.py): the verify (also bound in eagle_worker_common.py:31 and ngram_worker.py:27),
# the output streamer's class (scheduler.py:2647), the tokenizer's meta_info (tokenizer_manager.py:2824).
VERIFY_TARGET = "sglang.srt.speculative.eagle_utils.eagle_sample"
STREAMER_TARGET = "sglang.srt.managers.scheduler.Scheduler.get_output_streamer_class"
META_INFO_TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info"
# Dense Qwen3 MTP drafts (qwen3_mtp.py).
DRAFT_CONFIG_TARGET = "sglang.srt.configs.model_config.ModelConfig._config_draft_model"
TARGET_LOAD_TARGET = "sglang.srt.models.qwen3.Qwen3ForCausalLM.load_weights"
SAFETENSORS_FILTER_TARGET = "sglang.srt.model_loader.weight_utils.filter_duplicate_safetensors_files"


def load() -> None:
    """Register Bebop's hooks with SGLang's HookRegistry (called by SGLang's plugin loader)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from . import qwen3_mtp, stats
    from .kernel import chain_speculative_sampling

    HookRegistry.register(KERNEL_TARGET, chain_speculative_sampling, HookType.REPLACE)
    HookRegistry.register(VERIFY_TARGET, stats.around_eagle_sample, HookType.AROUND)
    HookRegistry.register(STREAMER_TARGET, stats.after_get_output_streamer_class, HookType.AFTER)
    HookRegistry.register(META_INFO_TARGET, stats.after_update_request_meta_info, HookType.AFTER)
    HookRegistry.register(DRAFT_CONFIG_TARGET, qwen3_mtp.after_config_draft_model, HookType.AFTER)
    HookRegistry.register(TARGET_LOAD_TARGET, qwen3_mtp.around_target_load_weights, HookType.AROUND)
    HookRegistry.register(SAFETENSORS_FILTER_TARGET, qwen3_mtp.after_filter_safetensors, HookType.AFTER)
    logger.info("bebop plugin: chain_speculative_sampling_triton -> Bebop's chain rejection sampler")
