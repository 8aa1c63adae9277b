"""The shipped demo model: tokenizer, backbone and MTP heads, all trained here from fixed seeds.

``make demo-model`` runs ``build_demo_model`` into ``service/demo_model/`` (package data), so
``make serve`` works offline. The directory holds a Hugging Face ``qwen3`` checkpoint whose
``mtp.*`` head is the e2e-TV one, and ``heads/<loss>.safetensors`` for every loss, for the
comparison in ``docs/results.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from ..model import ModelConfig, save_model
from ..model.demo_path import demo_model_dir
from .backbone import read_head
from .mtp_eval import HEADS_DIR
from .mtp_train import LOSSES, TrainConfig, train_mtp
from .pretrain import pretrain_backbone
from .tasks import make_corpus
from .tokenizer import EOS_TOKEN, PAD_TOKEN, build_tokenizer, encode, save_tokenizer

log = logging.getLogger(__name__)

SERVED_HEAD = "e2e_tv"  # the head in model.safetensors, the one the engine drafts with


@dataclass
class DemoRecipe:
    """Sizes and seeds of the demo model; the defaults are what ships."""

    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["arith", "story"])
    corpus_size: int = 10_000  # texts per task
    vocab_size: int = 768  # byte-level BPE: 256 bytes + merges; 768 fits a story in ~43 tokens
    max_len: int = 96
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    backbone_iters: int = 1500
    head_iters: int = 400  # CE warm-up of the head, as native MTP heads come CE-trained
    finetune_iters: int = 400  # then each loss fine-tunes that head (CE included, for equal budgets)
    head_steps: int = 3
    losses: tuple[str, ...] = LOSSES


def build_demo_model(
    out: Path | None = None, recipe: DemoRecipe | None = None, progress: bool = True
) -> Path:
    """Train everything and write the model directory; returns it."""
    recipe = recipe or DemoRecipe()
    out = Path(out) if out is not None else demo_model_dir()
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    corpus = make_corpus(recipe.tasks, recipe.corpus_size, recipe.seed)
    tok = build_tokenizer(corpus, recipe.vocab_size)
    eos, pad = tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)
    seqs = [[*encode(tok, text), eos][: recipe.max_len] for text in corpus]
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        head_dim=recipe.hidden_size // recipe.heads,
        max_position_embeddings=256,
        num_mtp_layers=1,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=eos,
    )
    model = pretrain_backbone(cfg, seqs, recipe.backbone_iters, seed=recipe.seed, progress=progress)
    base = work / "backbone"
    save_model(model, base)
    save_tokenizer(tok, base)

    def head_config(loss: str, out: str, iters: int, init_from: str | None) -> TrainConfig:
        return TrainConfig(
            model=str(base),
            out=str(work / out),
            loss=loss,
            steps=recipe.head_steps,
            iters=iters,
            max_len=recipe.max_len,
            seed=recipe.seed,
            tasks=list(recipe.tasks),
            corpus_size=recipe.corpus_size // 4,
            save_every=iters,
            progress=progress,
            init_from=init_from,
            lr=1e-3 if init_from else 2e-3,
        )

    warm = train_mtp(head_config("ce", "head-warmup", recipe.head_iters, None))
    heads = {}
    for loss in recipe.losses:
        trained = train_mtp(head_config(loss, f"head-{loss}", recipe.finetune_iters, str(warm)))
        heads[loss] = {f"mtp.{k}": v for k, v in read_head(trained).items()}

    final = work / "final"
    shutil.copytree(work / f"head-{SERVED_HEAD}", final, ignore=shutil.ignore_patterns("mtp_checkpoint.pt"))
    (final / HEADS_DIR).mkdir()
    for loss, state in heads.items():
        save_file(state, str(final / HEADS_DIR / f"{loss}.safetensors"), metadata={"format": "pt"})
    (final / "demo_recipe.json").write_text(json.dumps(recipe.__dict__, indent=2, default=list) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    final.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("demo model written to %s", out)
    return out
