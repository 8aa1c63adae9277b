"""Pre-RL MTP head training on a frozen backbone (``bebop train-mtp``).

Each step: the backbone's states and laws on a batch of texts (no gradient), the head's draft
logits for every teacher-forced chain S steps deep (``mtp_chain_logits``), and one of the losses:

    ce       -sum p log q            (soft cross-entropy against the backbone's law p)
    kl       KL(p || q)              (same gradient as ce)
    rkl      KL(q || p)
    tv       TV(p, q) = 1 - sum min(p, q), per draft step
    e2e_tv   1 - mean_j prod_{i<=j} (1 - TV_i): the expected accepted fraction of a chain

The acceptance shown live is rejection sampling's analytic acceptance per draft depth,
``sum_v min(p, q)``, averaged over valid chain steps.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..kernels import e2e_tv_loss, tv_loss
from ..kernels.tv_loss import ce_loss_reference, kl_loss_reference, reverse_kl_loss_reference
from ..model.mtp import mtp_chain_logits
from .backbone import HFBackbone, OwnBackbone, open_backbone, read_head

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "mtp_checkpoint.pt"
RowLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ROW_LOSSES: dict[str, RowLoss] = {
    "ce": ce_loss_reference,
    "kl": kl_loss_reference,
    "rkl": reverse_kl_loss_reference,
    "tv": tv_loss,
}
LOSSES = (*ROW_LOSSES, "e2e_tv")


@dataclass
class TrainConfig:
    """Everything ``train_mtp`` needs; the CLI maps its flags one to one."""

    model: str
    out: str
    loss: str = "e2e_tv"
    steps: int = 3  # draft depth S the head is trained for
    iters: int = 300
    batch_size: int = 32
    max_len: int = 64
    lr: float = 2e-3
    warmup: int = 20
    seed: int = 0
    dtype: str = "fp32"  # or "bf16" (autocast for the head)
    tasks: list[str] = field(default_factory=lambda: ["arith", "story"])
    data: str | None = None  # a text file (one example per line) or .jsonl with "text"; overrides tasks
    corpus_size: int = 4000
    save_every: int = 100
    resume: bool = False
    init_from: str | None = None  # a model directory whose mtp.* weights start the head (fine-tuning)
    progress: bool = True


def chain_targets(logits: torch.Tensor, steps: int) -> torch.Tensor:
    """Backbone logits [B, L, V] -> [B, L, S, V]: entry (b, i, k-1) is the law at position i + k."""
    B, L, V = logits.shape
    padded = torch.cat([logits, logits.new_zeros(B, steps, V)], 1)
    return torch.stack([padded[:, k : k + L] for k in range(1, steps + 1)], 2)


def chain_mask(lengths: torch.Tensor, L: int, steps: int) -> torch.Tensor:
    """[B, L, S] bool: chain step (i, k) is valid when the position i + k holds a real token."""
    i = torch.arange(L)[:, None]
    k = torch.arange(1, steps + 1)[None, :]
    return (i + k)[None] < lengths[:, None, None]


def mtp_loss(
    backbone: OwnBackbone | HFBackbone, input_ids: torch.Tensor, lengths: torch.Tensor, steps: int, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss and the analytic acceptance per draft depth [S] (no gradient)."""
    hidden, logits = backbone.states(input_ids)
    draft = mtp_chain_logits(backbone, input_ids, hidden, steps)  # [B, L, S, V]
    target = chain_targets(logits, steps)
    mask = chain_mask(lengths, input_ids.shape[1], steps)
    V = draft.shape[-1]
    if loss == "e2e_tv":
        value = e2e_tv_loss(
            draft.reshape(-1, steps, V), target.reshape(-1, steps, V), mask.reshape(-1, steps)
        )
    else:
        rows = ROW_LOSSES[loss](draft[mask], target[mask])
        value = rows.mean()
    with torch.no_grad():
        overlap = torch.minimum(torch.softmax(draft.float(), -1), torch.softmax(target.float(), -1)).sum(-1)
        acceptance = (overlap * mask).sum((0, 1)) / mask.sum((0, 1)).clamp_min(1)
    return value, acceptance


def load_texts(cfg: TrainConfig) -> list[str]:
    """Training texts: the --data file, or a corpus of the demo tasks."""
    if cfg.data:
        path = Path(cfg.data)
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if path.suffix == ".jsonl":
            return [json.loads(ln)["text"] for ln in lines]
        return lines
    from .tasks import make_corpus

    return make_corpus(cfg.tasks, cfg.corpus_size, cfg.seed)


def encode_texts(model_dir: Path, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each text plus end-of-text, cut to ``max_len``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eos = json.loads((model_dir / "config.json").read_text()).get("eos_token_id")
    out = []
    for text in texts:
        ids = tok.encode(text).ids + ([eos] if isinstance(eos, int) else [])
        if len(ids) >= 2:
            out.append(ids[:max_len])
    if not out:
        raise ValueError("no training text survived tokenisation")
    return out


def make_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and lengths [B]."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.int64)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


def train_mtp(cfg: TrainConfig) -> Path:
    """Train the MTP head of ``cfg.model`` and write the result to ``cfg.out``; returns ``cfg.out``."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.steps < 1:
        raise ValueError("steps must be >= 1")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model_dir, out = Path(cfg.model), Path(cfg.out)
    backbone = open_backbone(model_dir)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if cfg.init_from:
        backbone.mtp.load_state_dict(read_head(Path(cfg.init_from)))
    head_params = list(backbone.mtp.parameters())
    for p in head_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(head_params, lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / cfg.warmup))
    seqs = encode_texts(model_dir, load_texts(cfg), cfg.max_len)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    ckpt_path = out / CHECKPOINT_FILE
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        backbone.mtp.load_state_dict(state["mtp"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["iter"]
        log.info("resumed from %s at iteration %d", ckpt_path, start)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    bar = tqdm(range(start, cfg.iters), desc=f"train-mtp {cfg.loss}", disable=not cfg.progress, initial=start)
    for it in bar:
        ids, lengths = make_batch(rng.sample(seqs, min(cfg.batch_size, len(seqs))))
        with autocast:
            loss, acceptance = mtp_loss(backbone, ids, lengths, cfg.steps, cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head_params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", accept=" ".join(f"{a:.3f}" for a in acceptance.tolist()))
        if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iters:
            state = {
                "mtp": backbone.mtp.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "iter": it + 1,
                "config": asdict(cfg),
            }
            torch.save(state, ckpt_path)
    backbone.save(model_dir, out)
    (out / "mtp_training.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return out
