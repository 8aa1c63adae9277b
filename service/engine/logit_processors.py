"""Sampling parameters that change the law beyond temperature/top-k/top-p: ``logit_bias``,
``min_new_tokens``, ``min_p`` and the frequency, presence and repetition penalties (SGLang 0.5.23
semantics).

The maths are pure functions over ``[N, V]`` rows; ``SlotProcessors`` keeps their per-slot state
beside the runner's per-slot tensors and applies them to the rows of a batch. The runner calls
``SlotProcessors.apply_logits`` before ``target_probs`` and ``apply_probs`` after it, for draft laws
(q) and target laws (p) alike, so speculative verification stays exact; both are skipped when no row
of the batch uses them.

Order, as in SGLang's sampler (``SamplingBatchInfo.apply_logits_bias``): the penalties (frequency and
presence subtract, repetition scales), the bias and the min-new-tokens mask on the logits, then
temperature, top-k, top-p (``target_probs``), then min_p relative to the top token's probability.
(SGLang masks before the presence and repetition penalties and adds the bias after them; -inf stays
-inf under both, so the order here gives the same law.) The min_p test
``p < min_p * max p`` is scale-free and the top token survives top-k and top-p, so applying it to the
filtered law drops the same tokens as SGLang's test on the unfiltered one.

Bias, min_p and min_new_tokens depend on how many tokens were generated, not which: row
``r * T + j`` predicts the token at absolute position ``positions[r] + j``. The penalties depend on
which: row ``r * T + j`` of a speculative step sees the slot's output counts plus the drafts before
it in its chain (``drafted``), which are exactly the tokens output before that position if the chain
is accepted that far. (SGLang's speculative path gives every draft position the counts of the step's
start, which is not the law plain decoding samples.)
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


def penalize(
    logits: torch.Tensor,
    counts: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """logits [N, V] float32; counts [N, V] float32, each token's occurrences in the output so far;
    frequency, presence [N] (0: off) and repetition [N] (1: off) float32. Returns [N, V].

    Rows with neutral values come back bit for bit: x - 0 * c - 0 = x and x / 1 = x."""
    seen = counts > 0
    logits = logits - frequency[:, None] * counts - presence[:, None] * seen
    scale = torch.where(seen, repetition[:, None], torch.ones_like(logits))
    return torch.where(logits < 0, logits * scale, logits / scale)


def chain_counts(counts: torch.Tensor, drafted: torch.Tensor | None, T: int) -> torch.Tensor:
    """Output counts of each row of a chain: counts [R, V] float32 of the slots, drafted [R, D]
    int64 (D >= T - 1; None: no drafts) -> [R * T, V], row ``r * T + j`` holding counts[r] plus the
    drafts ``drafted[r, :D - T + 1 + j]`` (a verify step: D = T - 1 drafts, row j after j of them;
    draft depth k: T = 1, after all k - 1 drafts so far)."""
    R, V = counts.shape
    D = 0 if drafted is None else drafted.shape[1]
    if D == 0:
        return counts.repeat_interleave(T, 0)
    ones = torch.zeros(R, D + 1, V, device=counts.device)
    ones[:, 1:].scatter_(2, drafted[:, :, None], 1.0)  # [R, D + 1, V]: draft i at index i + 1
    before = ones.cumsum(1)[:, D + 1 - T :]  # [R, T, V]: drafts before each row
    return (counts[:, None] + before).reshape(R * T, V)


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
        self.counts: torch.Tensor | None = None  # [S, V] float32: output token counts (penalised slots)
        self.frequency = torch.zeros(slots, device=device)  # [S]
        self.presence = torch.zeros(slots, device=device)  # [S]
        self.repetition = torch.ones(slots, device=device)  # [S]
        self._has_penalty = [False] * slots
        self._has_bias = [False] * slots
        self._has_min_new = [False] * slots
        self._has_min_p = [False] * slots

    def admit(
        self, slot: int, params: SamplingParams, first_position: int, history: list[int] | None = None
    ) -> None:
        """Set ``slot``'s state for a request whose next sampled token sits at ``first_position`` and
        is its first output token (a resumed request passes ``min_new_tokens`` net of its output, and
        the tokens it output before its pending one as ``history``)."""
        self.active[slot] = params.changes_logits
        self._has_penalty[slot] = params.penalized
        self.frequency[slot] = params.frequency_penalty
        self.presence[slot] = params.presence_penalty
        self.repetition[slot] = params.repetition_penalty
        if params.penalized:
            if self.counts is None:
                self.counts = torch.zeros(len(self.active), self.V, device=self.device)
            self.counts[slot] = 0
            if history:
                tokens = torch.tensor(history, dtype=torch.int64, device=self.device)
                self.counts[slot].index_add_(0, tokens, torch.ones(len(history), device=self.device))
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
            self._has_penalty[dst] = False
            return
        self._has_penalty[dst] = self._has_penalty[src]
        for table in (self.frequency, self.presence, self.repetition, self.counts):
            if table is not None:
                table[dst] = table[src]
        self.active[dst], self._has_bias[dst] = self.active[src], self._has_bias[src]
        self._has_min_new[dst], self._has_min_p[dst] = self._has_min_new[src], self._has_min_p[src]
        self.min_p[dst], self.min_new_until[dst] = self.min_p[src], self.min_new_until[src]
        if self.bias is not None:
            self.bias[dst] = self.bias[src]
        if self.stop_mask is not None:
            self.stop_mask[dst] = self.stop_mask[src]

    def any(self, rows: slice) -> bool:
        return any(self.active[rows])

    def record(self, rows: slice, tokens: torch.Tensor, emitted: torch.Tensor | None = None) -> None:
        """Count the tokens a step output: tokens [R, T] int64 of the slots ``rows``, of which the
        first emitted[r] + 1 of row r are output (None: all T). Only penalised slots read counts."""
        if self.counts is None or not any(self._has_penalty[rows]):
            return
        R, T = tokens.shape
        output = torch.ones(R, T, device=tokens.device)
        if emitted is not None:
            output = (torch.arange(T, device=tokens.device) <= emitted[:, None]).float()
        self.counts[rows].scatter_add_(1, tokens.clamp(min=0), output)

    def apply_logits(
        self,
        logits: torch.Tensor,
        rows: slice,
        T: int,
        positions: torch.Tensor,
        drafted: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """logits [R * T, V] float32 of the slots ``rows`` (T consecutive positions per slot);
        positions [R] int64: the absolute position predicted by each slot's first row; drafted
        [R, D] int64 (D >= T - 1): the chain's draft tokens, which the penalties count as output
        before the rows that follow them (see ``chain_counts``). -> [R * T, V]."""
        if self.counts is not None and any(self._has_penalty[rows]):
            logits = penalize(
                logits,
                chain_counts(self.counts[rows], drafted, T),
                self.frequency[rows].repeat_interleave(T),
                self.presence[rows].repeat_interleave(T),
                self.repetition[rows].repeat_interleave(T),
            )
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
