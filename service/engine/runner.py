"""Model execution for the engine: prefill, plain decoding, and MTP draft + verify steps.

State of a running sequence between steps: its committed tokens are in the target KV slot, the
newest token x_t (position t) is *pending* (sampled but not yet run through the target), and
``mtp_pairs`` lists the (hidden, next-token) pairs whose depth-1 MTP entries are not yet cached.

One speculative step for a batch (G = draft steps):
  draft   depth 1 runs the pending pairs through the MTP layer (committing their entries) and
          drafts d_1 from the last one; depths 2..G each draft one token over temporary entries;
  verify  the target runs [x_t, d_1..d_G] at positions t..t+G in one forward;
  accept  ``chain_rejection_sample`` with the per-request laws; the target slot keeps x_t and the
          accepted drafts; the emitted residual/bonus token becomes the new pending token.
Randomness is keyed by (seed, absolute position, slot), so a sequence's tokens do not depend on
the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bebop.kernels import SLOT_DRAFT, SLOT_SAMPLE, chain_rejection_sample, sample_from_probs
from bebop.service.engine.kv_pool import SlotPool, batch_mask
from bebop.service.engine.sampling import SamplingParams, target_probs
from bebop.service.model import Qwen3Model

SPEC_MODES = ("none", "target_only", "rejection")


@dataclass
class SeqState:
    """What the runner keeps per running sequence."""

    slot: int
    params: SamplingParams
    seed: int
    pending: int  # token x_t, not yet in the target cache
    position: int  # t, the absolute position of ``pending``
    mtp_pairs: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # ([C] hidden, token)


@dataclass
class StepOutput:
    """Tokens a sequence gained in one step, with their log-probs and target entropies."""

    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    drafts_proposed: int = 0
    drafts_accepted: int = 0


class ModelRunner:
    """Owns the model and its KV slot pools; every method runs between scheduler steps."""

    def __init__(
        self, model: Qwen3Model, max_running: int, max_len: int, spec: str = "rejection", draft_steps: int = 3
    ):
        if spec not in SPEC_MODES:
            raise ValueError(f"spec must be one of {SPEC_MODES}, got {spec!r}")
        if spec != "none" and model.mtp is None:
            raise ValueError("speculative decoding needs a model with an MTP head (mtp.* weights)")
        self.model = model.eval()
        self.spec = spec
        self.G = draft_steps if spec != "none" else 0
        cfg = model.config
        self.max_len = max_len
        slack = self.G + 2  # verify and padded MTP entries may write past a sequence's final length
        dtype = next(model.parameters()).dtype
        self.kv = SlotPool(
            cfg.num_hidden_layers, max_running, cfg.num_key_value_heads, max_len + slack, cfg.head_dim, dtype
        )
        self.mtp_kv = SlotPool(
            max(1, cfg.num_mtp_layers),
            max_running,
            cfg.num_key_value_heads,
            max_len + slack,
            cfg.head_dim,
            dtype,
        )
        self.vocab_size = cfg.vocab_size

    # ------------------------------------------------------------------ admission
    def free_slots(self) -> int:
        return len(self.kv.free)

    def release(self, state: SeqState) -> None:
        self.kv.release(state.slot)
        self.mtp_kv.release(state.slot)

    @torch.no_grad()
    def prefill(
        self, prompt: list[int], params: SamplingParams, seed: int, resume_token: int | None = None
    ) -> tuple[SeqState, StepOutput]:
        """Run the prompt and sample the first token at position len(prompt). Needs a free slot.

        ``resume_token`` re-admits a retracted sequence: ``prompt`` is everything before its
        pending token, which is kept instead of sampled, so the continuation draws the same
        counter-RNG numbers at the same positions as if it had never left the batch.
        """
        slot = self.kv.allocate()
        mtp_slot = self.mtp_kv.allocate()
        assert slot is not None and mtp_slot == slot, "slot pools out of step"
        ids = torch.tensor([prompt])
        slots = torch.tensor([slot])
        out = self._target_forward(slots, ids, torch.tensor([len(prompt)]))
        probs = self._laws(out.logits[:, -1:], [params])  # [1, 1, V]
        n = len(prompt)
        token = resume_token
        if token is None:
            first = sample_from_probs(probs[:, 0], torch.tensor([seed]), torch.tensor([n]), validate=False)
            token = int(first)
        state = SeqState(slot=slot, params=params, seed=seed, pending=token, position=n)
        if self.G:
            # depth-1 MTP entries: (h_j, x_{j+1}) for the prompt, and (h_{n-1}, x_n) with the new token
            state.mtp_pairs = [(out.hidden[0, j], prompt[j + 1]) for j in range(n - 1)] + [
                (out.hidden[0, n - 1], token)
            ]
        if resume_token is not None:
            return state, StepOutput(tokens=[], logprobs=[], entropies=[])
        return state, _emitted([token], probs[0, :1])

    # ------------------------------------------------------------------ steps
    @torch.no_grad()
    def step(self, states: list[SeqState]) -> list[StepOutput]:
        """One decoding step for every running sequence (plain or speculative)."""
        if not states:
            return []
        return self._spec_step(states) if self.G else self._plain_step(states)

    def _plain_step(self, states: list[SeqState]) -> list[StepOutput]:
        slots = torch.tensor([s.slot for s in states])
        ids = torch.tensor([[s.pending] for s in states])
        out = self._target_forward(slots, ids, torch.ones(len(states), dtype=torch.int64))
        probs = self._laws(out.logits, [s.params for s in states])[:, 0]  # [B, V]
        seeds = torch.tensor([s.seed for s in states])
        positions = torch.tensor([s.position + 1 for s in states])
        tokens = sample_from_probs(probs, seeds, positions, slot=SLOT_SAMPLE, validate=False)
        outputs = []
        for b, s in enumerate(states):
            s.pending, s.position = int(tokens[b]), s.position + 1
            outputs.append(_emitted([s.pending], probs[b : b + 1]))
        return outputs

    def _spec_step(self, states: list[SeqState]) -> list[StepOutput]:
        G = self.G
        params = [s.params for s in states]
        seeds = torch.tensor([s.seed for s in states])
        start = torch.tensor([s.position for s in states])  # t
        drafts, draft_laws = self._draft(states, params, seeds, start)  # [B, G], [B, G, V]

        slots = torch.tensor([s.slot for s in states])
        ids = torch.cat([torch.tensor([[s.pending] for s in states]), drafts], 1)  # [B, G+1]
        out = self._target_forward(slots, ids, keep=None)
        probs = self._laws(out.logits, params)  # [B, G+1, V]
        verdict = chain_rejection_sample(
            probs,
            draft_laws if self.spec == "rejection" else None,
            drafts,
            seeds,
            start + 1,
            validate=False,
        )
        accepted = verdict.num_accepted
        self.kv.lengths[slots] += accepted + 1  # x_t and the accepted drafts; the rest is rolled back
        outputs = []
        for b, s in enumerate(states):
            a = int(accepted[b])
            emitted = verdict.tokens[b, : a + 1].tolist()
            # pending pairs for the next draft: (h at t..t+a, the token after each)
            s.mtp_pairs = [(out.hidden[b, j], emitted[j]) for j in range(a + 1)]
            s.pending, s.position = emitted[-1], s.position + a + 1
            step = _emitted(emitted, probs[b, : a + 1], verdict.entropy[b, : a + 1])
            step.drafts_proposed, step.drafts_accepted = G, a
            outputs.append(step)
        return outputs

    def _draft(self, states, params, seeds, start) -> tuple[torch.Tensor, torch.Tensor]:
        """G draft tokens per sequence and the laws they were drawn from: [B, G], [B, G, V]."""
        B, G = len(states), self.G
        model = self.model
        slots = torch.tensor([s.slot for s in states])
        # depth 1 over each row's pending pairs (left-aligned, padded to the longest)
        n_new = torch.tensor([len(s.mtp_pairs) for s in states])
        T = int(n_new.max())
        C = model.config.hidden_size
        hidden = torch.zeros(B, T, C, dtype=next(model.parameters()).dtype)
        tokens = torch.zeros(B, T, dtype=torch.int64)
        for b, s in enumerate(states):
            for j, (h, tok) in enumerate(s.mtp_pairs):
                hidden[b, j], tokens[b, j] = h, tok
        past, P = self.mtp_kv.gather(slots)
        lengths = self.mtp_kv.lengths[slots].clone()
        first_pos = start - n_new + 1  # pair j sits at position (t - n + 1) + j
        positions = first_pos[:, None] + torch.arange(T)[None]
        mask = batch_mask(lengths, P, T)
        out = model.mtp(model.embed(tokens), hidden, model.rope(positions), model.lm_head, mask, past)
        self.mtp_kv.scatter(slots, out.cache, P, T, keep=n_new)
        for s in states:
            s.mtp_pairs = []
        last = n_new - 1
        logits = out.logits[torch.arange(B), last]  # [B, V]
        h = out.hidden[torch.arange(B), last][:, None]  # [B, 1, C]
        cache = out.cache
        # later depths attend to the committed entries and this chain's temporary ones
        valid = torch.cat(
            [torch.arange(P)[None] < lengths[:, None], torch.arange(T)[None] < n_new[:, None]], 1
        )
        drafts, laws = [], []
        for k in range(1, G + 1):
            law = self._laws(logits[:, None], params)[:, 0]  # [B, V]
            pos = start + k  # the draft is the token at t + k
            if self.spec == "rejection":
                d = sample_from_probs(law, seeds, pos, slot=SLOT_DRAFT, validate=False)
            else:
                d = law.argmax(-1)
            drafts.append(d)
            laws.append(law)
            if k == G:
                break
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool)], 1)
            step = model.mtp(
                model.embed(d[:, None]),
                h,
                model.rope(pos[:, None]),
                model.lm_head,
                valid[:, None, None],
                cache,
            )
            logits, h, cache = step.logits[:, 0], step.hidden, step.cache
        return torch.stack(drafts, 1), torch.stack(laws, 1)

    # ------------------------------------------------------------------ helpers
    def _target_forward(self, slots: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor | None):
        """Target forward of ids [B, T] after each slot's cached tokens; writes the new KV entries and
        advances lengths by ``keep`` [B] (None: advance nothing, the caller decides)."""
        B, T = ids.shape
        past, P = self.kv.gather(slots)
        lengths = self.kv.lengths[slots]
        positions = lengths[:, None] + torch.arange(T)[None]
        out = self.model(ids, positions, batch_mask(lengths, P, T), past)
        self.kv.scatter(
            slots, out.cache, P, T, keep if keep is not None else torch.zeros(B, dtype=torch.int64)
        )
        return out

    def _laws(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """[B, T, V] logits -> the per-request target laws, same shape."""
        B, T, V = logits.shape
        temp = torch.tensor([p.temperature for p in params]).repeat_interleave(T)
        top_k = torch.tensor([p.top_k for p in params]).repeat_interleave(T)
        top_p = torch.tensor([p.top_p for p in params]).repeat_interleave(T)
        return target_probs(logits.reshape(B * T, V).float(), temp, top_k, top_p).view(B, T, V)


def _emitted(tokens: list[int], probs: torch.Tensor, entropy: torch.Tensor | None = None) -> StepOutput:
    """Log-probs (of the law each token was sampled from) and entropies for tokens [n], probs [n, V]."""
    idx = torch.tensor(tokens)
    chosen = probs[torch.arange(len(tokens)), idx]
    if entropy is None:
        entropy = -torch.special.xlogy(probs, probs).sum(-1)
    return StepOutput(tokens=tokens, logprobs=chosen.log().tolist(), entropies=entropy.tolist())
