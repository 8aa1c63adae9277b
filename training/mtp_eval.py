"""MTP head evaluation (``bebop eval-mtp``): acceptance on held-out prompts, per task and per head.

For each held-out prompt the backbone samples a completion at the chosen temperature (the
rollout an RL trainer would see). Along it, every chain of G drafts starting inside the completion
is scored with target law p and draft law q, both at that temperature:

    rs acceptance, position k      sum_v min(p_k, q_k)           (analytic; rejection sampling)
    target-only acceptance, k      p_k(argmax q_k)               (SGLang's default verify)
    empirical                      ``chain_rejection_sample`` on drafts sampled from q

``rs_acceptance`` and ``target_only_acceptance`` average the per-position figures over k = 1..G.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernels import SLOT_DRAFT, chain_rejection_sample, sample_from_probs
from ..model import Qwen3Model, load_model
from ..model.mtp import mtp_chain_logits
from .backbone import OwnBackbone, head_tensors
from .mtp_train import chain_targets

HEADS_DIR = "heads"  # <model>/heads/<loss>.safetensors: alternative MTP heads shipped for comparison


@dataclass
class Rollouts:
    """Sampled sequences [B, L] with the index where each completion starts and its end [B]."""

    ids: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor


def available_heads(model_dir: Path) -> dict[str, Path | None]:
    """Heads to evaluate: ``heads/<loss>.safetensors`` files, else the model's own head (None)."""
    heads_dir = model_dir / HEADS_DIR
    found = {p.stem: p for p in sorted(heads_dir.glob("*.safetensors"))} if heads_dir.is_dir() else {}
    return found or {"model": None}


def load_head(model: Qwen3Model, path: Path | None) -> None:
    if path is not None:
        model.mtp.load_state_dict(head_tensors(path))


@torch.no_grad()
def sample_rollouts(
    model: Qwen3Model, prompts: list[list[int]], max_new: int, temperature: float, eos: int | None, seed: int
) -> Rollouts:
    """Plain ancestral sampling from the backbone (no speculation), one batch, no KV cache."""
    B = len(prompts)
    width = max(len(p) for p in prompts) + max_new
    ids = torch.zeros(B, width, dtype=torch.int64)
    length = torch.tensor([len(p) for p in prompts])
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    start = length.clone()
    done = torch.zeros(B, dtype=torch.bool)
    seeds = torch.arange(B, dtype=torch.int64) + seed * 1_000_003
    for _ in range(max_new):
        logits = model(ids[:, : int(length.max())]).logits
        last = logits[torch.arange(B), length - 1]
        probs = _tempered(last, temperature)
        token = sample_from_probs(probs, seeds, length, validate=False)
        active = ~done
        ids[active, length[active]] = token[active]
        length = length + active.long()
        if eos is not None:
            done |= token == eos
        done |= length >= width
        if bool(done.all()):
            break
    return Rollouts(ids=ids[:, : int(length.max())], start=start, length=length)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return torch.softmax(logits.float() / temperature, -1)


@torch.no_grad()
def score_rollouts(model: Qwen3Model, rollouts: Rollouts, gamma: int, temperature: float, seed: int) -> dict:
    """Acceptance figures over every full chain that starts inside a completion."""
    ids = rollouts.ids
    L = ids.shape[1]
    out = model(ids)
    draft = mtp_chain_logits(OwnBackbone(model), ids, out.hidden, gamma)  # [B, L, G, V]
    target = chain_targets(out.logits, gamma + 1)  # [B, L, G+1, V]: laws at i+1 .. i+G+1
    i = torch.arange(L)
    # chain i drafts tokens i+2..i+G+1; it is scored when the bonus law's position i+G+1 is real
    # and the chain's first draft lies in the completion (i + 1 >= start).
    valid = (i[None] + 1 >= rollouts.start[:, None]) & (i[None] + gamma + 1 < rollouts.length[:, None])
    p = _tempered(target[valid], temperature)  # [N, G+1, V]
    q = _tempered(draft[valid], temperature)  # [N, G, V]
    entropy = -torch.special.xlogy(p[:, :gamma], p[:, :gamma]).sum(-1)  # [N, G]
    rs = torch.minimum(p[:, :gamma], q).sum(-1)  # [N, G]
    target_only = p[:, :gamma].gather(2, q.argmax(-1, keepdim=True)).squeeze(2)  # [N, G]

    N = p.shape[0]
    seeds = torch.arange(N, dtype=torch.int64) + seed * 7_919
    positions = torch.zeros(N, dtype=torch.int64)
    drafts = torch.stack(
        [
            sample_from_probs(q[:, k], seeds, positions + k, slot=SLOT_DRAFT, validate=False)
            for k in range(gamma)
        ],
        1,
    )
    verdict = chain_rejection_sample(p, q, drafts, seeds, positions, validate=False, with_entropy=False)
    reached = torch.stack([(verdict.num_accepted >= k).float().sum() for k in range(gamma + 1)])
    empirical = (reached[1:] / reached[:-1].clamp_min(1)).tolist()  # P(accept k | reached k)
    return {
        "chains": N,
        "per_position": rs.mean(0).tolist(),
        "rs_acceptance": float(rs.mean()),
        "target_only_per_position": target_only.mean(0).tolist(),
        "target_only_acceptance": float(target_only.mean()),
        "per_position_empirical": empirical,
        "accept_length": float(verdict.num_accepted.float().mean() + 1),
        "entropy": float(entropy.mean()),
    }


def evaluate(
    model_dir: str | Path,
    tasks: list[str],
    gamma: int = 3,
    temperature: float = 1.0,
    prompts_per_task: int = 64,
    max_new: int = 48,
    seed: int = 0,
) -> dict:
    """The ``eval-mtp --json`` report: one row per (task, head)."""
    from tokenizers import Tokenizer

    from .tasks import held_out_prompts

    model_dir = Path(model_dir)
    model = load_model(model_dir).eval()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    heads = available_heads(model_dir)
    rows = []
    for task in tasks:
        prompts = [tok.encode(ex.prompt).ids for ex in held_out_prompts(task, prompts_per_task, seed)]
        rollouts = sample_rollouts(model, prompts, max_new, temperature, model.config.eos_token_id, seed)
        for loss, path in heads.items():
            load_head(model, path)
            rows.append(
                {"task": task, "loss": loss, **score_rollouts(model, rollouts, gamma, temperature, seed)}
            )
    return {"gamma": gamma, "temperature": temperature, "rows": rows}
