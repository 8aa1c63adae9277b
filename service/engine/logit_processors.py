"""Sampling parameters that change the law beyond temperature/top-k/top-p: ``logit_bias``,
``min_new_tokens`` and ``min_p`` (SGLang 0.5.23 semantics).

The maths are pure functions over ``[N, V]`` rows; ``SlotProcessors`` keeps their per-slot state
beside the runner's per-slot tensors and applies them to the rows of a batch. The runner calls
``SlotProcessors.apply_logits`` before ``target_probs`` and ``apply_probs`` after it, for draft laws
(q) and target laws (p) alike, so speculative verification stays exact; both are skipped when no row
of the batch uses them.

Order, as in SGLang's sampler: bias and the min-new-tokens mask on the logits, then temperature,
top-k, top-p (``target_probs``), then min_p relative to the top token's probability. The min_p test
``p < min_p * max p`` is scale-free and the top token survives top-k and top-p, so applying it to the
filtered law drops the same tokens as SGLang's test on the unfiltered one.

None of the three depends on which tokens were generated, only on how many (min_new_tokens), so the
law at each draft position of a speculative step is exact: row ``r * T + j`` predicts the token at
absolute position ``positions[r] + j``.
"""

from __future__ import annotations

import torch

from .sampling import SamplingParams


def add_logit_bias(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """logits [N, V] float32 + bias [N, V] float32 (0 where a row has no bias) -> [N, V]."""
    return logits + bias


def mask_stop_tokens(logits: torch.Tensor, stop_mask: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """min_new_tokens: -inf on the stop tokens of blocked rows.

    logits [N, V] float32; stop_mask [N, V] bool (EOS and the row's stop_token_ids);
    blocked [N] bool (the row predicts a token before its min_new_tokens-th). Returns [N, V].
    """
    return logits.masked_fill(stop_mask & blocked[:, None], float("-inf"))


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """probs [N, V] float32 rows summing to 1; min_p [N] in [0, 1] (0: off). Tokens whose probability
    is below ``min_p * max(probs)`` get 0 and the rest are renormalised; the top token always stays.
    Returns [N, V]."""
    top = probs.max(-1, keepdim=True).values  # [N, 1]
    kept = probs.masked_fill(probs < min_p[:, None] * top, 0.0)
    return kept / kept.sum(-1, keepdim=True)


class SlotProcessors:
    """Per-slot state of the law-changing parameters, for a pool of S slots over a vocabulary of V.

    Dense [S, V] tables (bias, stop mask) are allocated on the first request that needs them.
    ``active`` is a host list of flags, so the runner decides to skip everything without a sync.
    """

    def __init__(self, slots: int, vocab_size: int, device: torch.device, eos_token_id: int | None):
        self.V, self.device, self.eos = vocab_size, device, eos_token_id
        self.active = [False] * slots
        self.min_p = torch.zeros(slots, device=device)  # [S]
        self.min_new_until = torch.zeros(slots, dtype=torch.int64, device=device)  # [S] absolute position
        self.bias: torch.Tensor | None = None  # [S, V] float32
        self.stop_mask: torch.Tensor | None = None  # [S, V] bool
        self._has_bias = [False] * slots
        self._has_min_new = [False] * slots
        self._has_min_p = [False] * slots

    def admit(self, slot: int, params: SamplingParams, first_position: int) -> None:
        """Set ``slot``'s state for a request whose next sampled token sits at ``first_position`` and
        is its first output token (a resumed request passes ``min_new_tokens`` net of its output)."""
        self.active[slot] = params.changes_logits
        self.min_p[slot] = params.min_p
        self._has_bias[slot] = bool(params.logit_bias)
        self._has_min_new[slot] = params.min_new_tokens > 0
        self._has_min_p[slot] = params.min_p > 0
        if params.logit_bias:
            if self.bias is None:
                self.bias = torch.zeros(len(self.active), self.V, device=self.device)
            self.bias[slot] = 0
            tokens = torch.tensor(list(params.logit_bias), dtype=torch.int64, device=self.device)
            self.bias[slot, tokens] = torch.tensor(list(params.logit_bias.values()), device=self.device)
        if params.min_new_tokens > 0:
            if self.stop_mask is None:
                self.stop_mask = torch.zeros(len(self.active), self.V, dtype=torch.bool, device=self.device)
            stops = {*params.stop_token_ids, *([] if self.eos is None else [self.eos])}
            self.stop_mask[slot] = False
            if stops:
                self.stop_mask[slot, torch.tensor(sorted(stops), device=self.device)] = True
            self.min_new_until[slot] = first_position + params.min_new_tokens

    def move(self, dst: int, src: int | None) -> None:
        """The pool moved slot ``src`` into ``dst`` (None: ``dst`` was freed and nothing moved)."""
        if src is None:
            self.active[dst] = self._has_bias[dst] = self._has_min_new[dst] = self._has_min_p[dst] = False
            return
        self.active[dst], self._has_bias[dst] = self.active[src], self._has_bias[src]
        self._has_min_new[dst], self._has_min_p[dst] = self._has_min_new[src], self._has_min_p[src]
        self.min_p[dst], self.min_new_until[dst] = self.min_p[src], self.min_new_until[src]
        if self.bias is not None:
            self.bias[dst] = self.bias[src]
        if self.stop_mask is not None:
            self.stop_mask[dst] = self.stop_mask[src]

    def any(self, rows: slice) -> bool:
        return any(self.active[rows])

    def apply_logits(
        self, logits: torch.Tensor, rows: slice, T: int, positions: torch.Tensor
    ) -> torch.Tensor:
        """logits [R * T, V] float32 of the slots ``rows`` (T consecutive positions per slot);
        positions [R] int64: the absolute position predicted by each slot's first row. -> [R * T, V]."""
        if self.bias is not None and any(self._has_bias[rows]):
            logits = add_logit_bias(logits, self.bias[rows].repeat_interleave(T, 0))
        if self.stop_mask is not None and any(self._has_min_new[rows]):
            R = logits.shape[0] // T
            predicted = positions[:, None] + torch.arange(T, device=logits.device)  # [R, T]
            blocked = predicted < self.min_new_until[rows][:, None]
            logits = mask_stop_tokens(
                logits, self.stop_mask[rows].repeat_interleave(T, 0), blocked.view(R * T)
            )
        return logits

    def apply_probs(self, probs: torch.Tensor, rows: slice, T: int) -> torch.Tensor:
        """probs [R * T, V] float32 -> [R * T, V] with min_p applied (rows with min_p 0 unchanged)."""
        if not any(self._has_min_p[rows]):
            return probs
        return apply_min_p(probs, self.min_p[rows].repeat_interleave(T))
