"""Per-request sampling parameters (SGLang's ``sampling_params``) and the target laws they define."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_NEW_TOKENS_LIMIT = 1 << 16  # beyond any context this engine serves; larger is a typo


class BadRequest(ValueError):
    """A request the engine refuses with a 4xx and this message."""


@dataclass
class SamplingParams:
    """SGLang 0.5.23 field names; unknown fields are ignored, bad values refused."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) = whole vocabulary
    max_new_tokens: int = 128
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    sampling_seed: int | None = None

    @classmethod
    def from_dict(cls, raw: dict | None, vocab_size: int) -> SamplingParams:
        raw = raw or {}
        if not isinstance(raw, dict):
            raise BadRequest("sampling_params must be an object")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and raw[k] is not None}
        try:
            params = cls(**known)
            params.temperature = float(params.temperature)
            params.top_p = float(params.top_p)
            params.top_k = int(params.top_k)
            params.max_new_tokens = int(params.max_new_tokens)
            params.stop_token_ids = [int(t) for t in params.stop_token_ids]
            params.ignore_eos = bool(params.ignore_eos)
            if params.sampling_seed is not None:
                params.sampling_seed = int(params.sampling_seed)
        except (TypeError, ValueError) as err:
            raise BadRequest(f"sampling_params has a value of the wrong type: {err}") from None
        params.validate(vocab_size)
        return params

    def validate(self, vocab_size: int) -> None:
        if not (self.temperature >= 0.0) or self.temperature > 100.0:  # also refuses NaN
            raise BadRequest(f"temperature must be in [0, 100], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise BadRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise BadRequest(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if not (0 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT):
            raise BadRequest(
                f"max_new_tokens must be in [0, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}"
            )
        bad = [t for t in self.stop_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise BadRequest(f"stop_token_ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        if self.sampling_seed is not None and not (-(2**63) <= self.sampling_seed < 2**63):
            raise BadRequest("sampling_seed must fit in 64 bits")


def target_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Laws to sample from, one per row: temperature, then top-k, then top-p (SGLang's order).

    logits [N, V] float32; temperature [N] (0 = greedy: one-hot argmax); top_k [N] int (<= 0 off);
    top_p [N] in (0, 1]. Returns [N, V] float32 rows summing to 1.
    """
    V = logits.shape[1]
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]
    if bool(((top_k > 0) & (top_k < V)).any()) or bool((top_p < 1).any()):
        sorted_logits, order = scaled.sort(-1, descending=True)
        rank = torch.arange(V, device=logits.device)[None]
        k = torch.where(top_k > 0, top_k, V)[:, None]
        drop = rank >= k
        probs_sorted = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), -1)
        # keep the smallest prefix whose mass reaches top_p (always the first token)
        before = probs_sorted.cumsum(-1) - probs_sorted
        drop |= before >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, sorted_logits)
    probs = torch.softmax(scaled, -1)
    if bool(greedy.any()):
        one_hot = torch.nn.functional.one_hot(logits.argmax(-1), V).float()
        probs = torch.where(greedy[:, None], one_hot, probs)
    return probs
