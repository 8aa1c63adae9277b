"""Model execution for the engine: prefill, plain decoding, and MTP draft + verify steps.

State of a running sequence between steps, kept in per-slot tensors on the engine's device (the
pool keeps running sequences in slots 0..B-1, so a batch is always the first B rows):

    position   t, the absolute position of the pending token; the target cache holds 0..t-1
    pending    x_t, sampled but not yet run through the target
    pend_*     the (hidden, next token) pairs whose depth-1 MTP entries are not cached yet: after
               prefill one pair, after a speculative step the a + 1 pairs of the verified tokens
               (at most G + 1); the MTP cache holds the pairs of positions 1..t - n_pend

One speculative step for a batch (G = draft steps; shapes in the method docstrings):
  draft   depth 1 runs the pending pairs through the MTP layer (committing their entries) and
          drafts d_1; depths 2..G each draft one token over temporary entries;
  verify  the target runs [x_t, d_1..d_G] at positions t..t+G in one forward;
  accept  ``chain_rejection_sample`` with the per-request laws; the target keeps x_t and the
          accepted drafts; the emitted residual/bonus token becomes the new pending token.
Every step is batched: no Python loop over rows, all of a step's draft uniforms in one
counter-RNG call, attention over the slot pool in place (``PoolCache``).

Randomness is keyed by (seed, absolute position, slot), so a sequence's tokens do not depend on
the rest of the batch. On CUDA the Triton kernels draw (``sample_from_probs``,
``chain_rejection_sample``); on CPU their torch twins, which give the same tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...kernels import SLOT_DRAFT, SLOT_SAMPLE, chain_rejection_sample, draw_from_probs, sample_from_probs
from ...kernels.rejection import entropy_nats
from ...kernels.rng import SLOT_ACCEPT, uniform_table
from ...model import Qwen3Model
from .kv_pool import SlotPool, prefix_mask
from .logit_processors import SlotProcessors
from .sampling import GREEDY_TEMPERATURE, SamplingParams, target_probs

log = logging.getLogger(__name__)

SPEC_MODES = ("none", "target_only", "rejection")
# Positions of counter-RNG uniforms the CPU path keeps per sequence: a Philox call costs ~0.3 ms in
# per-call overhead whatever its size, so one call every RNG_WINDOW positions replaces three a step.
RNG_WINDOW = 128
# Batch sizes a CUDA graph is captured for; a batch runs in the smallest bucket that holds it (the
# extra rows are free slots, reset before each replay), as SGLang's cuda_graph_bs list does.
CUDA_GRAPH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass
class SeqState:
    """The host side of a running sequence; the runner moves ``slot`` when the pool compacts."""

    slot: int
    params: SamplingParams
    seed: int
    position: int  # t, the absolute position of the pending token
    rng_base: int = 0  # first position of the slot's counter-RNG table (CPU path; host copy)


@dataclass
class LawParams:
    """What ``_laws`` needs of a batch's requests, per row of an [R * T, V] law (``_law_params``)."""

    temperature: torch.Tensor | None  # [R * T]; None: every row at temperature 1
    top_k: torch.Tensor  # [R * T]; empty when filter_rows is
    top_p: torch.Tensor  # [R * T]; empty when filter_rows is
    filter_rows: torch.Tensor  # [F] int64: the rows that use top-k or top-p
    any_greedy: bool
    processors: bool  # some row uses logit_bias, penalties, min_p, ...


@dataclass
class StepOutput:
    """Tokens a sequence gained in one step, with their log-probs and target entropies."""

    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    drafts_proposed: int = 0
    drafts_accepted: int = 0


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else CPU (``bebop engine --device``'s default)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelRunner:
    """Owns the model, its KV slot pools and the per-slot state; every method runs between steps."""

    def __init__(
        self,
        model: Qwen3Model,
        max_running: int,
        max_len: int,
        spec: str = "rejection",
        draft_steps: int = 3,
        device: torch.device | str | None = None,
        cuda_graphs: bool | None = None,
        static_shapes: bool = False,
    ):
        if spec not in SPEC_MODES:
            raise ValueError(f"spec must be one of {SPEC_MODES}, got {spec!r}")
        if spec != "none" and model.mtp is None:
            raise ValueError("speculative decoding needs a model with an MTP head (mtp.* weights)")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.G = G = draft_steps if spec != "none" else 0
        cfg = model.config
        self.max_len = max_len
        # A step writes up to G + 1 target entries past t, and the MTP G + 1 pending pairs plus
        # G - 1 temporary draft entries past t - n_pend: 2G + 2 entries of slack cover both.
        entries = max_len + 2 * G + 2
        dtype = next(model.parameters()).dtype
        dev = self.device
        S, C = max_running, cfg.hidden_size
        K, D = cfg.num_key_value_heads, cfg.head_dim
        self.kv = SlotPool(cfg.num_hidden_layers, S, K, entries, D, dtype, dev)
        self.mtp_kv = SlotPool(max(1, cfg.num_mtp_layers), S, K, entries, D, dtype, dev)
        self.vocab_size = cfg.vocab_size
        # per-slot state, [S, ...]; rows move with their sequence when the pool compacts
        self.seed = torch.zeros(S, dtype=torch.int64, device=dev)
        self.position = torch.zeros(S, dtype=torch.int64, device=dev)
        self.pending = torch.zeros(S, dtype=torch.int64, device=dev)
        self.temperature = torch.ones(S, device=dev)
        self.top_k = torch.full((S,), -1, dtype=torch.int64, device=dev)
        self.top_p = torch.ones(S, device=dev)
        self.pend_hidden = torch.zeros(S, G + 1, C, dtype=dtype, device=dev)
        self.pend_tokens = torch.zeros(S, G + 1, dtype=torch.int64, device=dev)
        self.n_pend = torch.ones(S, dtype=torch.int64, device=dev)
        self._slot_tensors = [
            self.seed, self.position, self.pending, self.temperature, self.top_k, self.top_p,
            self.pend_hidden, self.pend_tokens, self.n_pend,
        ]  # fmt: skip
        self._on_cuda = dev.type == "cuda"
        if not self._on_cuda:  # uniforms of positions rng_base..rng_base+RNG_WINDOW-1 (uniform_table)
            self.rng_base = torch.zeros(S, dtype=torch.int64)
            # [S, RNG_WINDOW, 3] float64, the last index a counter-RNG slot (SLOT_ACCEPT, SLOT_SAMPLE,
            # SLOT_DRAFT = 0, 1, 2): a step reads all its uniforms in one gather. The accept coins
            # are float32 values, held exactly.
            self.rng_table = torch.zeros(S, RNG_WINDOW, 3, dtype=torch.float64)
            self._slot_tensors += [self.rng_base, self.rng_table]
        self.procs = SlotProcessors(S, cfg.vocab_size, dev, cfg.eos_token_id)  # logit_bias, min_p, ...
        self._owner: list[SeqState | None] = [None] * S
        self._arange = torch.arange(max(entries, S), device=dev)
        self._no_rows = torch.zeros(0, dtype=torch.int64, device=dev)
        # CUDA graphs (default on CUDA): a step's launches are replayed as one graph per
        # (batch bucket, filtered?, greedy?); attention then spans the whole slot (fixed shapes).
        self.cuda_graphs = self._on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not self._on_cuda:
            raise ValueError("cuda_graphs needs the runner on a CUDA device")
        # static_shapes runs, eagerly, exactly what a graph replays (bucket rows, whole-slot span):
        # how the CPU tests check the graphs' semantics
        self.static_shapes = static_shapes or self.cuda_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple]] = {}
        self._graph_pool = None
        model.build_rope_table(entries + G + 2)  # every position a step can reach

    # ------------------------------------------------------------------ admission
    def free_slots(self) -> int:
        return self.kv.capacity - self.kv.active

    @property
    def running(self) -> int:
        return self.kv.active

    def release(self, state: SeqState) -> None:
        """Free the sequence's slot; the last running sequence moves into it (its state's ``slot``
        is updated), so the batch stays the first rows of the pool."""
        slot = state.slot
        if self._owner[slot] is not state:
            raise ValueError(f"sequence at slot {slot} is not running here (released twice?)")
        moved = self.kv.release(slot)
        self.mtp_kv.release(slot)
        if moved is not None:
            for t in self._slot_tensors:
                t[slot] = t[moved]
            self.procs.move(slot, moved)
            owner = self._owner[moved]
            assert owner is not None
            owner.slot = slot
            self._owner[slot] = owner
        else:
            self._owner[slot] = None
            self.procs.move(slot, None)
        self._owner[self.kv.active] = None

    @torch.no_grad()
    def prefill(
        self,
        prompt: list[int],
        params: SamplingParams,
        seed: int,
        resume_token: int | None = None,
        history: list[int] | None = None,
    ) -> tuple[SeqState, StepOutput]:
        """Run the prompt and sample the first token at position len(prompt). Needs a free slot.

        ``resume_token`` re-admits a retracted sequence: ``prompt`` is everything before its
        pending token, which is kept instead of sampled, so the continuation draws the same
        counter-RNG numbers at the same positions as if it had never left the batch. ``history``:
        the tokens it output before the pending one (the tail of ``prompt``), for the penalties.
        """
        resume = None if resume_token is None else [resume_token]
        histories = None if history is None else [history]
        return self.prefill_group([prompt], [params], [seed], resume, histories)[0]

    @torch.no_grad()
    def prefill_group(
        self,
        prompts: list[list[int]],
        params: list[SamplingParams],
        seeds: list[int],
        resume_tokens: list[int] | None = None,
        histories: list[list[int]] | None = None,
    ) -> list[tuple[SeqState, StepOutput]]:
        """``prefill`` for R prompts in one forward (a GRPO group: n samples of a prompt; or
        requests admitted together). Needs R free slots. Each row's tokens are those it would get
        alone.

        Prompts of different lengths are right-padded to the longest. That needs no extra mask: a
        pad sits after its row's last token, so no real token attends to it (causal), and its KV
        entries lie past the row's length, where the row's next tokens overwrite them before any
        read. The prompts' depth-1 MTP entries are computed here too, so a step never carries more
        than G + 1 pending pairs per row, whatever was admitted beside it.
        """
        R = len(prompts)
        if not R == len(params) == len(seeds) or not R:
            raise ValueError("prefill_group takes one or more prompts, with one params and seed each")
        for prompt in prompts:
            if not 1 <= len(prompt) < self.max_len:
                raise ValueError(f"prompt length {len(prompt)} must be in [1, {self.max_len})")
        if self.free_slots() < R:
            raise RuntimeError("no free KV slot: admission must check free_slots() first")
        states = []
        for prompt, prm, seed in zip(prompts, params, seeds, strict=True):
            slot = self.kv.allocate()
            assert slot is not None and self.mtp_kv.allocate() == slot, "slot pools out of step"
            states.append(SeqState(slot=slot, params=prm, seed=seed, position=len(prompt)))
            self._owner[slot] = states[-1]
        try:
            tokens, probs = self._prefill(
                slice(states[0].slot, states[-1].slot + 1), prompts, states, resume_tokens, histories
            )
        except BaseException:
            for state in reversed(states):
                self.release(state)
            raise
        if resume_tokens is not None:
            return [(s, StepOutput(tokens=[], logprobs=[], entropies=[])) for s in states]
        logprobs = probs.gather(1, tokens[:, None]).log()  # [R, 1]
        return list(
            zip(states, _outputs(tokens[:, None], logprobs, entropy_nats(probs)[:, None], 0), strict=True)
        )

    def _prefill(
        self,
        rows: slice,
        prompts: list[list[int]],
        states: list[SeqState],
        resume_tokens: list[int] | None,
        histories: list[list[int]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (R of them, right-padded to the longest, n) into the slots ``rows``: ([R] first
        tokens, [R, V] their laws)."""
        R, dev = len(prompts), self.device
        lengths = [len(p) for p in prompts]
        n = max(lengths)
        lens = torch.tensor(lengths, device=dev)  # [R]: each row's first sampled position
        last = lens - 1  # [R]: each row's last prompt token
        every = self._arange[:R]
        params = [s.params for s in states]
        self.seed[rows] = torch.tensor([s.seed for s in states], device=dev)
        self.temperature[rows] = torch.tensor([p.temperature for p in params], device=dev)
        self.top_k[rows] = torch.tensor([p.top_k for p in params], device=dev)
        self.top_p[rows] = torch.tensor([p.top_p for p in params], device=dev)
        for i, state in enumerate(states):
            slot, prm = state.slot, state.params
            self.procs.admit(slot, prm, lengths[i], None if histories is None else histories[i])
        if not self._on_cuda:
            self._refill_rng(states, lengths)
        ids = torch.tensor([p + [p[-1]] * (n - len(p)) for p in prompts], device=dev)  # [R, n], padded
        index = self._arange[:n].expand(R, n)  # positions, and the entries they are written to
        start = self._arange[:R] * 0
        out = self.model(ids, index, self._mask(start, n, n), self.kv.views(rows, index, n), logits_at=last)
        probs = self._laws(out.logits, rows, lens)[:, 0]  # [R, V]
        if resume_tokens is not None:
            tokens = torch.tensor(resume_tokens, device=dev)
        else:
            tokens = self._draw(probs, rows, lens, SLOT_SAMPLE)
        self.procs.record(rows, tokens[:, None])
        self.position[rows], self.pending[rows] = lens, tokens
        if self.G:
            model = self.model
            if n > 1:  # depth-1 entries of the pairs (h_j, x_{j+1}) at positions 1..n-1
                model.mtp(
                    model.embed(ids[:, 1:]),
                    out.hidden[:, :-1],
                    model.rope(index[:, 1:]),
                    model.lm_head,
                    self._mask(start, n - 1, n - 1),
                    self.mtp_kv.views(rows, index[:, : n - 1], n - 1),
                    logits_at=start,  # the entries are what is needed, not the logits
                )
            self.pend_hidden[rows, 0] = out.hidden[every, last]
            self.pend_tokens[rows, 0] = tokens
            self.n_pend[rows] = 1
        return tokens, probs

    # ------------------------------------------------------------------ steps
    @torch.no_grad()
    def step(self, states: list[SeqState]) -> list[StepOutput]:
        """One decoding step for every running sequence (plain or speculative), in ``states`` order."""
        if not states:
            return []
        B = self.kv.active
        if len(states) != B or sorted(s.slot for s in states) != list(range(B)):
            raise ValueError(f"step() takes every running sequence ({B}), got {len(states)}")
        if not self._on_cuda:
            self._refresh_rng(states)
        top = max(s.position for s in states)  # the batch's longest row, known on the host
        tokens, logprobs, entropy, accepted = self._run(B, top)
        self.procs.record(slice(0, B), tokens, accepted)  # outside any graph: a host decision
        outputs = _outputs(tokens, logprobs, entropy, self.G, accepted)
        for s in states:
            s.position += len(outputs[s.slot].tokens)
        return [outputs[s.slot] for s in states]

    def _run(self, B: int, top: int) -> tuple:
        """The step's tensors for rows 0..B-1: eager, or the replay of a captured CUDA graph.
        top: the largest position of the batch (its longest row's pending token)."""
        core = self._spec_step if self.G else self._plain_step
        if not self.static_shapes:
            return core(B, self._span(top))
        bucket = min([b for b in CUDA_GRAPH_BUCKETS if b >= B] or [self.kv.capacity])
        bucket = min(bucket, self.kv.capacity)
        self.position[B:bucket] = 0  # free rows compute harmlessly in their own slots
        self.n_pend[B:bucket] = 1
        if not self._on_cuda:
            self.rng_base[B:bucket] = 1  # their table reads start at entry 0
        rows = slice(0, bucket)
        # The processors choose their work on the host (which tables, which rows); a graph would
        # freeze the choice of its capture, so batches that use them run the same shapes eagerly.
        if not self.cuda_graphs or self.procs.any(rows):
            return tuple(None if t is None else t[:B] for t in core(bucket, self.kv.max_len))
        key = (bucket, any(self._filters(rows)), self._any_greedy(rows))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(bucket)
            except Exception:  # a capture failure must not take serving down: decode eagerly
                log.exception("CUDA graph capture failed for batch %d; running without graphs", bucket)
                self.cuda_graphs = self.static_shapes = False
                return self._run(B)
        graph, outputs = self._graphs[key]
        graph.replay()
        return tuple(None if t is None else t[:B] for t in outputs)

    def _span(self, top: int) -> int:
        """Entries a step attends over, given the batch's largest position ``top``: the plain step
        reads 0..top, the speculative one G + 1 target entries and G - 1 draft entries past its
        rows' positions (see the slack in __init__). Not rounded up: attention over extra masked
        entries changes the last bits of the outputs."""
        return top + (2 * self.G if self.G else 1)

    def _capture(self, bucket: int) -> tuple:
        """Capture one step of ``bucket`` rows; a warm-up run first (Triton compiles, the allocator
        settles), whose state changes are undone (its KV writes lie past every row's length)."""
        state = [self.position, self.pending, self.pend_hidden, self.pend_tokens, self.n_pend]
        saved = [t[:bucket].clone() for t in state]
        span = self.kv.max_len
        core = self._spec_step if self.G else self._plain_step
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            core(bucket, span)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for t, copy in zip(state, saved, strict=True):
            t[:bucket] = copy
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            outputs = core(bucket, span)  # recorded, not run
        self._graph_pool = graph.pool()
        return graph, outputs

    def _plain_step(self, B: int, span: int):
        """Decode one token for rows 0..B-1: ([B, 1] tokens, [B, 1] log-probs, [B, 1] entropy, None).
        span: entries attended per row (``_span``; the whole slot under CUDA graphs)."""
        rows = slice(0, B)
        t = self.position[:B].clone()  # [B]
        out = self.model(
            self.pending[:B, None], t[:, None], self._mask(t, 1, span), self.kv.views(rows, t[:, None], span)
        )
        probs = self._laws(out.logits, rows, t + 1)  # [B, 1, V]
        token = self._draw(probs[:, 0], rows, t + 1, SLOT_SAMPLE)
        self.position[:B] = t + 1
        self.pending[:B] = token
        return token[:, None], probs.gather(2, token[:, None, None])[..., 0].log(), entropy_nats(probs), None

    def _spec_step(self, B: int, span: int):
        """Draft G tokens per row, verify them in one target forward, accept by chain rejection
        sampling: ([B, G+1] tokens (-1 after the emitted ones), [B, G+1] log-probs, [B, G+1]
        target entropy, [B] accepted drafts)."""
        G, rows = self.G, slice(0, B)
        t = self.position[:B].clone()  # [B]
        seeds = self.seed[:B]
        index = t[:, None] + self._arange[: G + 1]  # [B, G+1]: positions and target entries
        mask = self._mask(t, G + 1, span)  # [B, 1, G+1, span]; its first rows serve the draft too
        # the counter RNG's own numbers, read from the table (CPU); on CUDA the kernels draw them
        table = None if self._on_cuda else self._step_uniforms(B, t)  # [B, G+1, 3]
        drafts, draft_laws = self._draft(B, t, span, index, mask, table)  # [B, G], [B, G, V]

        ids = torch.cat([self.pending[:B, None], drafts], 1)
        out = self.model(ids, index, mask, self.kv.views(rows, index, span))
        probs = self._laws(out.logits, rows, t + 1, drafts)  # [B, G+1, V]
        uniforms = {}
        if table is not None:
            coins, finals = table[:, :G, SLOT_ACCEPT].float(), table[:, :, SLOT_SAMPLE]
            uniforms = {"coins": coins, "final_coins": finals, "backend": "torch"}
        q = draft_laws if self.spec == "rejection" else None
        verdict = chain_rejection_sample(probs, q, drafts, seeds, t + 1, validate=False, **uniforms)
        accepted = verdict.num_accepted  # [B]
        tokens = verdict.tokens  # [B, G+1]
        emitted = tokens.clamp(min=0)
        self.position[:B] = t + accepted + 1
        self.pending[:B] = emitted.gather(1, accepted[:, None])[:, 0]
        self.pend_hidden[:B] = out.hidden  # h at t..t+G; the first a + 1 pair with the emitted tokens
        self.pend_tokens[:B] = emitted
        self.n_pend[:B] = accepted + 1
        logprobs = probs.gather(2, emitted[:, :, None])[..., 0].log()
        return tokens, logprobs, verdict.entropy, accepted

    def _draft(
        self,
        B: int,
        t: torch.Tensor,
        span: int,
        index: torch.Tensor,
        mask: torch.Tensor,
        table: torch.Tensor | None,
    ):
        """G draft tokens per row and the laws they were drawn from: [B, G] int64, [B, G, V].

        Depth 1 runs the G + 1 pending-pair places of every row (rows with fewer pairs compute
        padding that is never committed nor read) and commits each row's own n_pend entries;
        depth k > 1 appends one temporary entry (for d_{k-1} at position t + k - 1).
        index [B, G+1] = t..t+G and mask [B, 1, G+1, span] are the verify's (row j sees entries
        0..t+j), whose first G - 1 serve depths 2..G; table [B, G+1, 3]: the step's uniforms (CPU).
        """
        G, rows, model = self.G, slice(0, B), self.model
        n = self.n_pend[:B]
        positions = (t - n + 1)[:, None] + self._arange[: G + 1]  # [B, G+1]; MTP entry = position - 1
        base = t - n  # MTP entries committed so far
        out = model.mtp(
            model.embed(self.pend_tokens[:B]),
            self.pend_hidden[:B],
            model.rope(positions),
            model.lm_head,
            self._mask(base, G + 1, span),
            self.mtp_kv.views(rows, positions - 1, span),
            logits_at=n - 1,
        )
        logits, hidden = out.logits[:, 0], out.hidden  # [B, V]: the law of d_1; [B, 1, C]
        law = self._law_params(rows, 1)  # every depth's law has the same parameters
        uniforms = None if table is None else table[:, :G, SLOT_DRAFT]  # [B, G]
        # Depth k + 1 runs d_k at position t + k over MTP entry t + k - 1, which sees entries
        # 0..t+k-1: the verify's index and mask rows k - 1, made once for every depth
        entries = index[:, : G - 1]  # [B, G - 1]
        cos, sin = model.rope(index[:, 1:G])  # [B, 1, G - 1, D]
        drafts, laws = [], []
        for k in range(1, G + 1):
            drafted = torch.stack(drafts, 1) if drafts and law.processors else None
            probs = self._laws(logits[:, None], rows, t + k, drafted, law)[:, 0]
            if self.spec != "rejection":
                draft = probs.argmax(-1)
            else:
                u = None if uniforms is None else uniforms[:, k - 1]
                draft = self._draw(probs, rows, t + k, SLOT_DRAFT, u)
            drafts.append(draft)
            laws.append(probs)
            if k == G:
                break
            depth = slice(k - 1, k)
            step = model.mtp(
                model.embed(draft[:, None]),
                hidden,
                (cos[:, :, depth], sin[:, :, depth]),
                model.lm_head,
                mask[:, :, depth],
                self.mtp_kv.views(rows, entries[:, depth], span),
            )
            logits, hidden = step.logits[:, 0], step.hidden
        return torch.stack(drafts, 1), torch.stack(laws, 1)

    def _mask(self, base: torch.Tensor, T: int, span: int) -> torch.Tensor:
        """``prefix_mask`` in the model's dtype: [B, 1, T, span]."""
        return prefix_mask(base, T, span, self.kv.k.dtype, self._arange)

    # ------------------------------------------------------------------ laws and draws
    def _law_params(self, rows: slice, T: int) -> LawParams:
        """The sampling parameters of the slots ``rows``, one entry per row of an [R * T, V] law."""
        R = rows.stop - (rows.start or 0)

        def per_law_row(values: torch.Tensor) -> torch.Tensor:  # [R] -> [R * T]
            return values if T == 1 else values[:, None].expand(R, T).reshape(R * T)

        # Temperature 1 everywhere (RL's usual case): the division would return the logits unchanged
        # and is skipped. A captured CUDA graph keeps it, so that one graph serves any temperature.
        unit = not self.cuda_graphs and all(
            o is None or o.params.temperature == 1.0 for o in self._owner[rows]
        )
        temperature = None if unit else per_law_row(self.temperature[rows])
        filter_rows = top_k = top_p = self._no_rows  # no row filters: target_probs reads none of them
        filters = self._filters(rows)
        if any(filters):  # only then the rows to sort and their top-k and top-p
            top_k, top_p = per_law_row(self.top_k[rows]), per_law_row(self.top_p[rows])
            if self.cuda_graphs:  # a captured graph has fixed shapes
                filter_rows = torch.arange(R * T, device=self.device)
            else:
                flagged = [r for r, f in enumerate(filters) if f]
                filter_rows = torch.tensor([r * T + j for r in flagged for j in range(T)], device=self.device)
        return LawParams(temperature, top_k, top_p, filter_rows, self._any_greedy(rows), self.procs.any(rows))

    def _filters(self, rows: slice) -> list[bool]:
        """Per slot of ``rows``: its request uses top-k or top-p (a free slot of a padded batch: no)."""
        V = self.vocab_size
        return [o is not None and (0 < o.params.top_k < V or o.params.top_p < 1) for o in self._owner[rows]]

    def _any_greedy(self, rows: slice) -> bool:
        return any(o is not None and o.params.temperature < GREEDY_TEMPERATURE for o in self._owner[rows])

    def _laws(
        self,
        logits: torch.Tensor,
        rows: slice,
        positions: torch.Tensor,
        drafted: torch.Tensor | None = None,
        law: LawParams | None = None,
    ) -> torch.Tensor:
        """[R, T, V] logits of the slots in ``rows`` -> their requests' laws, same shape;
        positions [R]: the absolute position whose token logits[:, 0] predicts; drafted [R, D]: the
        draft tokens before these positions in this step's chain (the penalties count them);
        law: ``_law_params(rows, T)`` when the caller already has them (the draft depths share one)."""
        R, T, V = logits.shape
        law = law or self._law_params(rows, T)
        flat = logits.reshape(R * T, V).float()
        if not law.processors:
            return target_probs(
                flat, law.temperature, law.top_k, law.top_p, law.filter_rows, law.any_greedy
            ).view(R, T, V)
        flat = self.procs.apply_logits(flat, rows, T, positions, drafted)
        probs = target_probs(flat, law.temperature, law.top_k, law.top_p, law.filter_rows, law.any_greedy)
        return self.procs.apply_probs(probs, rows, T).view(R, T, V)

    def _refill_rng(self, states: list[SeqState], starts: list[int]) -> None:
        """Tables of the states' slots for positions ``starts`` onwards (CPU path); the host copy
        of each table's base (``SeqState.rng_base``) moves with it."""
        slots = torch.tensor([s.slot for s in states], device=self.device)
        start = torch.tensor(starts, device=self.device)
        coins, sample, draft = uniform_table(self.seed[slots], start, RNG_WINDOW)
        self.rng_base[slots] = start
        self.rng_table[slots] = torch.stack([coins.double(), sample, draft], -1)
        for state, first in zip(states, starts, strict=True):
            state.rng_base = first

    def _refresh_rng(self, states: list[SeqState]) -> None:
        """Before a step reads positions t+1..t+G+1: refill every row that is past half its window
        once any row would run off its table, so refills come in batches. Decided on the host
        (``SeqState.rng_base``), so a step that refills nothing costs no tensor op."""
        ahead = [s.position + self.G + 2 - s.rng_base for s in states]  # table entries the step needs
        if max(ahead) > RNG_WINDOW:
            refill = [s for s, a in zip(states, ahead, strict=True) if a > RNG_WINDOW // 2]
            self._refill_rng(refill, [s.position + 1 for s in refill])

    def _draw(
        self,
        probs: torch.Tensor,
        rows: slice,
        positions: torch.Tensor,
        slot: int,
        uniforms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One token per row of probs [R, V] (the slots ``rows``) at (seed, position, slot), [R] int64:
        the Triton kernel on CUDA, the twin's draw with the table's uniform on CPU (same tokens).
        uniforms [R]: those of (seed, position, slot), when the caller read them already (CPU)."""
        if self._on_cuda:
            return sample_from_probs(probs, self.seed[rows], positions, slot=slot, validate=False)
        if uniforms is None:
            offsets = positions - self.rng_base[rows]
            uniforms = self.rng_table[rows, :, slot].gather(1, offsets[:, None])[:, 0]
        return draw_from_probs(probs, uniforms)

    def _step_uniforms(self, B: int, t: torch.Tensor) -> torch.Tensor:
        """[B, G + 1, 3] float64: every uniform of positions t+1..t+G+1 of rows 0..B-1, by slot
        (the last index), in one gather from the table."""
        offsets = (t + 1 - self.rng_base[:B])[:, None] + self._arange[: self.G + 1]  # [B, G + 1]
        return self.rng_table[:B].gather(1, offsets[:, :, None].expand(B, self.G + 1, 3))


def _outputs(
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    entropy: torch.Tensor | None,
    G: int,
    accepted: torch.Tensor | None = None,
) -> list[StepOutput]:
    """Per-row outputs from [B, T] tokens, log-probs and entropies (the first accepted + 1 of each
    row when ``accepted`` [B] is given, else all T); one host transfer per tensor."""
    if entropy is None:
        entropy = torch.full(tokens.shape, float("nan"))
    tok, lp, ent = tokens.tolist(), logprobs.tolist(), entropy.tolist()
    if accepted is None:
        return [StepOutput(tok[b], lp[b], ent[b]) for b in range(len(tok))]
    acc = accepted.tolist()
    return [
        StepOutput(tok[b][: a + 1], lp[b][: a + 1], ent[b][: a + 1], drafts_proposed=G, drafts_accepted=a)
        for b, a in enumerate(acc)
    ]
