"""Per-request sampling parameters (SGLang's ``sampling_params``) and the target laws they define."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..text import has_lone_surrogate

MAX_NEW_TOKENS_LIMIT = 1 << 16  # beyond any context this engine serves; larger is a typo
MAX_TEMPERATURE = 100.0  # flatter than uniform to float32 precision; larger is a typo
TOP_K_LIMIT = (1 << 31) - 1  # SGLang keeps top_k in int32 tensors; a top_k >= the vocabulary means "off"
MAX_STOP_TOKEN_IDS = 1024
SEED_RANGE = (-(1 << 63), 1 << 63)  # the counter RNG keys on an int64 seed
MAX_STOP_STRINGS = 32  # SGLang 0.5.23's MAX_STOP_COUNT (sampling/sampling_params.py)
MAX_STOP_STRING_CHARS = 1024  # a stop string is matched on a decoded tail window this long
MAX_PENALTY = 2.0  # SGLang's bound on all three penalties
MAX_LOGIT_BIAS = 1e4  # beyond this a bias already makes a token certain or impossible in float32
# Fields SGLang 0.5.23 accepts that change nothing here (stream_interval: this engine streams once a
# step; custom_params: free-form, read by custom logit processors, which this engine has none of).
ACCEPTED_NO_EFFECT = ("stream_interval", "custom_params")
# Fields SGLang 0.5.23 accepts that this engine refuses unless they hold their neutral value: each
# would change the law or the request's shape in a way the engine does not implement. The values are
# the neutral ones (None: absent or empty).
REFUSED_UNLESS_NEUTRAL = {
    "n": 1,  # send n requests (or use the gateway's rollouts with "n")
    "beam_width": None,
    "json_schema": None,
    "regex": None,
    "ebnf": None,
    "structural_tag": None,
    "stop_regex": None,
    "watermark": None,
}


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
    """SGLang 0.5.23 field names and bounds (``sglang/srt/sampling/sampling_params.py``). As in
    SGLang, an unknown field is refused; so is a known field this engine cannot honour exactly
    (``REFUSED_UNLESS_NEUTRAL``), by name. Bad values are refused."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) = whole vocabulary
    max_new_tokens: int = 128
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    sampling_seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings, matched on the decoded output
    min_p: float = 0.0  # drop tokens whose probability is below min_p times the top token's
    min_new_tokens: int = 0  # EOS and stop_token_ids cannot be sampled before this many tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to the logits, by token id
    # Penalties on the output tokens so far (SGLang: the prompt is not counted): each token's logit
    # loses frequency_penalty per occurrence and presence_penalty once; repetition_penalty divides
    # the positive logits of tokens already output and multiplies the negative ones.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    skip_special_tokens: bool = True  # these three shape ``text`` only
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False

    @property
    def changes_logits(self) -> bool:
        """Whether the law needs ``logit_processors`` (the runner's fast path skips them otherwise)."""
        return bool(self.logit_bias) or self.min_p > 0 or self.min_new_tokens > 0 or self.penalized

    @property
    def penalized(self) -> bool:
        """Whether the law depends on which tokens were output (frequency/presence/repetition)."""
        return self.frequency_penalty != 0 or self.presence_penalty != 0 or self.repetition_penalty != 1

    @classmethod
    def from_dict(cls, raw: dict | None, vocab_size: int) -> SamplingParams:
        """Parse and bound every field, so that nothing a client sends can fail later in a step."""
        raw = raw or {}
        if not isinstance(raw, dict):
            raise BadRequest("sampling_params must be an object")
        fields = cls.__dataclass_fields__
        unknown = sorted(k for k in raw if k not in fields and k not in REFUSED_UNLESS_NEUTRAL)
        unknown = [k for k in unknown if k not in ACCEPTED_NO_EFFECT]
        if unknown:
            raise BadRequest(f"sampling_params has unknown field(s) {unknown[:8]} (SGLang refuses them too)")
        for name, neutral in REFUSED_UNLESS_NEUTRAL.items():
            value = raw.get(name)
            if value is None or value == neutral or (neutral is None and value in ("", [], {})):
                continue
            if isinstance(value, bool) or (neutral is not None and not isinstance(value, (int, float))):
                raise BadRequest(f"sampling_params.{name} has a value of the wrong type: {value!r}")
            raise BadRequest(
                f"sampling_params.{name} is not supported by this engine (only {neutral!r}), got "
                f"{str(value)[:80]}"
            )
        if raw.get("custom_params") is not None and not isinstance(raw["custom_params"], dict):
            raise BadRequest("sampling_params.custom_params must be an object")
        if raw.get("stream_interval") is not None:
            _integer("stream_interval", raw["stream_interval"], 1, MAX_NEW_TOKENS_LIMIT)
        known = {k: raw[k] for k in fields if k in raw and raw[k] is not None}
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
        for flag in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"):
            if flag in known:
                if not isinstance(known[flag], bool):
                    raise BadRequest(f"sampling_params.{flag} has a value of the wrong type: {known[flag]!r}")
                setattr(params, flag, known[flag])
        if "stop" in known:
            stop = [known["stop"]] if isinstance(known["stop"], str) else known["stop"]
            if not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
                raise BadRequest("sampling_params.stop must be a string or a list of strings")
            if len(stop) > MAX_STOP_STRINGS or any(len(x) > MAX_STOP_STRING_CHARS for x in stop):
                raise BadRequest(
                    f"sampling_params.stop: at most {MAX_STOP_STRINGS} strings of at most "
                    f"{MAX_STOP_STRING_CHARS} characters"
                )
            if any(has_lone_surrogate(x) for x in stop):
                raise BadRequest("sampling_params.stop holds a lone surrogate, which is not Unicode text")
            params.stop = [x for x in stop if x]  # an empty stop string never ends anything (SGLang)
        if "min_p" in known:
            params.min_p = _number("min_p", known["min_p"], 0.0, 1.0)
        for name in ("frequency_penalty", "presence_penalty"):  # SGLang's bounds
            if name in known:
                setattr(params, name, _number(name, known[name], -MAX_PENALTY, MAX_PENALTY))
        if "repetition_penalty" in known:
            params.repetition_penalty = _number(
                "repetition_penalty", known["repetition_penalty"], 0.0, MAX_PENALTY
            )
        if "min_new_tokens" in known:
            params.min_new_tokens = _integer(
                "min_new_tokens", known["min_new_tokens"], 0, MAX_NEW_TOKENS_LIMIT
            )
        if "logit_bias" in known:
            bias = known["logit_bias"]
            if not isinstance(bias, dict) or len(bias) > vocab_size:
                raise BadRequest("sampling_params.logit_bias must be an object {token id: bias}")
            params.logit_bias = {}
            for key, value in bias.items():
                try:
                    token = int(key)
                except ValueError:
                    raise BadRequest(
                        f"sampling_params.logit_bias key {key[:20]!r} is not a token id"
                    ) from None
                if not 0 <= token < vocab_size:
                    raise BadRequest(
                        f"sampling_params.logit_bias keys must be in [0, {vocab_size - 1}], got {token}"
                    )
                params.logit_bias[token] = _number("logit_bias", value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
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
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise BadRequest(
                f"min_new_tokens must be in [0, max_new_tokens ({self.max_new_tokens})], got "
                f"{self.min_new_tokens}"
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise BadRequest(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -MAX_PENALTY <= getattr(self, name) <= MAX_PENALTY:
                raise BadRequest(
                    f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {getattr(self, name)}"
                )
        if not 0.0 < self.repetition_penalty <= MAX_PENALTY:  # 0 would divide by zero
            raise BadRequest(
                f"repetition_penalty must be in (0, {MAX_PENALTY:g}] (1 = none), "
                f"got {self.repetition_penalty}"
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
    temperature: torch.Tensor | None,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    filter_rows: torch.Tensor | None = None,
    any_greedy: bool | None = None,
) -> torch.Tensor:
    """Laws to sample from, one per row: temperature, then top-k, then top-p (SGLang's order).

    logits [N, V] float32; temperature [N] (below ``GREEDY_TEMPERATURE``: greedy, a one-hot
    argmax), or None for temperature 1 in every row; top_k [N] int (<= 0 or >= V: off); top_p [N]
    in (0, 1] (1: off).
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
    if temperature is None:  # every row at temperature 1: logits / 1 would be the logits, bit for bit
        greedy, scaled = None, logits
    elif any_greedy is False:  # the same quotient as below, two ops fewer (the engine's usual case)
        greedy, scaled = None, logits / temperature[:, None]
    else:
        greedy = temperature < GREEDY_TEMPERATURE
        scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]
    if filter_rows is None:
        filter_rows = (((top_k > 0) & (top_k < V)) | (top_p < 1)).nonzero().flatten()
    if len(filter_rows):
        rows = scaled[filter_rows]  # [F, V]
        drop = _filtered_out(rows, top_k[filter_rows], top_p[filter_rows])
        scaled = scaled.index_put((filter_rows,), rows.masked_fill(drop, float("-inf")))
    probs = torch.softmax(scaled, -1)
    if greedy is None:
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
