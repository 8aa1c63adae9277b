"""Per-request sampling parameters (SGLang's ``sampling_params``) and the target laws they define."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_NEW_TOKENS_LIMIT = 1 << 16  # beyond any context this engine serves; larger is a typo
MAX_TEMPERATURE = 100.0  # flatter than uniform to float32 precision; larger is a typo
TOP_K_LIMIT = (1 << 31) - 1  # SGLang keeps top_k in int32 tensors; a top_k >= the vocabulary means "off"
MAX_STOP_TOKEN_IDS = 1024
SEED_RANGE = (-(1 << 63), 1 << 63)  # the counter RNG keys on an int64 seed


class BadRequest(ValueError):
    """A request the engine refuses with a 4xx and this message."""


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    """An integer in [lo, hi]: JSON ints, and floats that hold an exact integer (1e3). Refuses bools,
    strings, NaN, Infinity and 1e309, which ``int()`` would turn into a crash or a silent cast."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"sampling_params.{name} has a value of the wrong type: expected an integer, got {value!r}"
        )
    if not lo <= value <= hi:
        raise BadRequest(f"sampling_params.{name} must be in [{lo}, {hi}], got {value}")
    return value


def _number(name: str, value: object, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] (NaN and Infinity refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(
            f"sampling_params.{name} has a value of the wrong type: expected a number, got {value!r}"
        )
    value = float(value)
    if not (lo <= value <= hi):  # also refuses NaN
        raise BadRequest(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


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
        """Parse and bound every field, so that nothing a client sends can fail later in a step."""
        raw = raw or {}
        if not isinstance(raw, dict):
            raise BadRequest("sampling_params must be an object")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and raw[k] is not None}
        params = cls()
        if "temperature" in known:
            params.temperature = _number("temperature", known["temperature"], 0.0, MAX_TEMPERATURE)
        if "top_p" in known:
            params.top_p = _number("top_p", known["top_p"], 0.0, 1.0)
        if "top_k" in known:
            params.top_k = _integer("top_k", known["top_k"], -1, TOP_K_LIMIT)
        if "max_new_tokens" in known:
            params.max_new_tokens = _integer(
                "max_new_tokens", known["max_new_tokens"], 0, MAX_NEW_TOKENS_LIMIT
            )
        if "stop_token_ids" in known:
            stops = known["stop_token_ids"]
            if not isinstance(stops, list) or len(stops) > MAX_STOP_TOKEN_IDS:
                raise BadRequest(f"stop_token_ids must be a list of at most {MAX_STOP_TOKEN_IDS} token ids")
            params.stop_token_ids = [_integer("stop_token_ids", t, -(1 << 63), 1 << 63) for t in stops]
        if "ignore_eos" in known:
            if not isinstance(known["ignore_eos"], bool):
                raise BadRequest(
                    f"sampling_params.ignore_eos has a value of the wrong type: {known['ignore_eos']!r}"
                )
            params.ignore_eos = known["ignore_eos"]
        if "sampling_seed" in known:
            params.sampling_seed = _integer(
                "sampling_seed", known["sampling_seed"], SEED_RANGE[0], SEED_RANGE[1] - 1
            )
        params.validate(vocab_size)
        if params.top_k >= vocab_size:  # the same law, and no huge number reaches a tensor
            params.top_k = -1
        return params

    def validate(self, vocab_size: int) -> None:
        if not (self.temperature >= 0.0) or self.temperature > MAX_TEMPERATURE:  # also refuses NaN
            raise BadRequest(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise BadRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if not -1 <= self.top_k <= TOP_K_LIMIT:
            raise BadRequest(f"top_k must be -1 (off) or in [1, {TOP_K_LIMIT}], got {self.top_k}")
        if not (0 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT):
            raise BadRequest(
                f"max_new_tokens must be in [0, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}"
            )
        bad = [t for t in self.stop_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise BadRequest(f"stop_token_ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        if self.sampling_seed is not None and not (SEED_RANGE[0] <= self.sampling_seed < SEED_RANGE[1]):
            raise BadRequest("sampling_seed must fit in 64 bits")


# Temperatures below this are greedy, as in SGLang: dividing logits by a tiny positive temperature
# overflows float32 to inf, and softmax over infs is NaN.
GREEDY_TEMPERATURE = 1e-5


def target_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    filter_rows: torch.Tensor | None = None,
    any_greedy: bool | None = None,
) -> torch.Tensor:
    """Laws to sample from, one per row: temperature, then top-k, then top-p (SGLang's order).

    logits [N, V] float32; temperature [N] (below ``GREEDY_TEMPERATURE``: greedy, a one-hot
    argmax); top_k [N] int (<= 0 or >= V: off); top_p [N] in (0, 1] (1: off).
    filter_rows: [F] int64 indices of the rows that use top-k or top-p, when the caller knows them
    (the others skip the sort); None finds them here.
    any_greedy: whether any row is greedy, when the caller knows (False skips the argmax).
    Returns [N, V] float32 rows summing to 1.

    A row's law depends on that row alone. Filtering only decides which tokens to drop (in sorted
    order) and the law is always the softmax of the row's own scaled logits in vocabulary order, so
    a row without top-k/top-p gets bit-identical probabilities whatever else is in the batch, and
    top_p = 1 never drops a token (a float32 cumsum can reach 1.0 before the tail).
    """
    V = logits.shape[1]
    greedy = temperature < GREEDY_TEMPERATURE
    scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]
    if filter_rows is None:
        filter_rows = (((top_k > 0) & (top_k < V)) | (top_p < 1)).nonzero().flatten()
    if len(filter_rows):
        rows = scaled[filter_rows]  # [F, V]
        drop = _filtered_out(rows, top_k[filter_rows], top_p[filter_rows])
        scaled = scaled.index_put((filter_rows,), rows.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scaled, -1)
    if any_greedy is False:
        return probs
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), V).to(probs.dtype)
    return torch.where(greedy[:, None], one_hot, probs)


def _filtered_out(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[F, V] bool: tokens that top-k, then top-p (on the top-k law), drop; in vocabulary order."""
    V = scaled.shape[1]
    sorted_logits, order = scaled.sort(-1, descending=True)
    rank = torch.arange(V, device=scaled.device)[None]
    drop_sorted = rank >= torch.where((top_k > 0) & (top_k < V), top_k, V)[:, None]
    probs_sorted = torch.softmax(sorted_logits.masked_fill(drop_sorted, float("-inf")), -1)
    # keep the smallest prefix whose mass reaches top_p (always the first token)
    before = probs_sorted.cumsum(-1) - probs_sorted
    drop_sorted |= (before >= top_p[:, None]) & (top_p[:, None] < 1)
    return torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
