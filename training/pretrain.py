"""Next-token pre-training of the small demo backbone (CPU, minutes)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..model import ModelConfig, Qwen3Model
from .mtp_train import make_batch


def pretrain_backbone(
    cfg: ModelConfig,
    seqs: list[list[int]],
    iters: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> Qwen3Model:
    """Train ``Qwen3Model(cfg)`` (its MTP head untouched) on token sequences; returns it in eval mode."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = Qwen3Model(cfg)
    params = [p for name, p in model.named_parameters() if not name.startswith("mtp.")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, iters // 20)
    # Linear warm-up, then cosine decay to a tenth: the usual small-LM recipe.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: (
            min(1.0, (i + 1) / warmup)
            * (0.1 + 0.45 * (1 + torch.cos(torch.tensor(torch.pi * min(i, iters) / iters)).item()))
        ),
    )
    bar = tqdm(range(iters), desc="pretrain backbone", disable=not progress)
    for _ in bar:
        ids, lengths = make_batch(rng.sample(seqs, min(batch_size, len(seqs))))
        logits = model(ids[:, :-1]).logits
        targets = ids[:, 1:].masked_fill(torch.arange(ids.shape[1] - 1)[None] >= (lengths - 1)[:, None], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()
