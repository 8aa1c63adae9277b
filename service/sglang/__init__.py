"""Bebop inside stock SGLang 0.5.23, through its plugin mechanism (no fork).

SGLang loads every entry point of the group ``sglang.srt.plugins`` (allow-listed by
``SGLANG_PLUGINS`` when that is set) in each of its processes: launcher, tokenizer manager,
scheduler, detokenizer, DP controller (sglang/srt/plugins/__init__.py:103-141; the scheduler calls
it at sglang/srt/managers/scheduler.py:6323). Bebop's entry point is ``bebop =
bebop.service.sglang.plugin:load``; it registers hooks that ``HookRegistry.apply_hooks()`` then
applies, rebinding stale ``from x import y`` copies (sglang/srt/plugins/hook_registry.py:290-347).

- ``kernel``: Bebop's chain rejection sampler behind SGLang's ``chain_speculative_sampling_triton``.
- ``plugin``: the entry point and the hooks.
- ``launcher``: ``bebop sglang-server -- <sglang args>`` (flag checks, then SGLang's server).

RNG: the plugin uses SGLang's uniforms rather than Bebop's Philox counters. SGLang 0.5.23 already
derives them from the request's ``sampling_seed`` with a counter hash (murmur_hash32 of seed,
sequence length and column; sglang/srt/speculative/eagle_utils.py:417-455), and from
``torch.rand`` for unseeded requests, with the draft proposals on a separate seeded stream. Bebop's
counters would need the seed and position, which the kernel's signature does not carry, and would
silently change what a seeded request returns under SGLang. Keeping SGLang's coins keeps its
seeding contract, makes the patched kernel's accept decisions identical to SGLang's kernel on the
same inputs (tested), and leaves the gain where it is: the tiled single-pass kernel, its
order-independent integer CDF and the entropy it computes on the way.

Every module here imports without SGLang installed: SGLang is imported inside functions only.
"""
