"""Frozen backbones for MTP head training: our model, or any Hugging Face causal LM directory.

Both expose what ``mtp_chain_logits`` needs (``embed``, ``lm_head``, ``rope``, ``mtp``) and
``states(input_ids) -> (hidden [B, L, C], logits [B, L, V])``, where ``hidden`` is the last
layer's output before the final norm (the state SGLang hands its NEXTN draft layer).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..model import ModelConfig, Qwen3Model, load_model, save_model
from ..model.decoder import rope_cos_sin
from ..model.hf_io import CONFIG_FILE, MTP_LAYERS_KEY, WEIGHTS_FILE, config_from_hf
from ..model.mtp import MTPHead

MTP_WEIGHTS_FILE = "mtp.safetensors"  # MTP weights written next to a foreign checkpoint
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class OwnBackbone(nn.Module):
    """Our ``Qwen3Model``, frozen except for its MTP head."""

    def __init__(self, model: Qwen3Model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.mtp = model.mtp
        self.lm_head = model.lm_head

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.rope(positions)

    @torch.no_grad()
    def states(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids)
        return out.hidden, out.logits

    def save(self, source: Path, out: Path) -> None:
        save_model(self.model, out)
        copy_tokenizer(source, out)


class HFBackbone(nn.Module):
    """A Hugging Face causal LM through ``transformers`` with a fresh (or resumed) Bebop MTP head."""

    def __init__(self, directory: Path, num_mtp_layers: int = 1):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        raw = json.loads((directory / CONFIG_FILE).read_text())
        raw.setdefault(MTP_LAYERS_KEY, num_mtp_layers)
        raw["model_type"] = "qwen3"  # only the shape fields are read for the head
        self.config: ModelConfig = config_from_hf(raw)
        self.config.num_mtp_layers = max(1, self.config.num_mtp_layers)
        self.mtp = MTPHead(self.config)
        self.mtp.apply(Qwen3Model._init_weights)
        self.lm_head = self.hf.get_output_embeddings()
        self._captured: torch.Tensor | None = None
        # The hidden state before the final norm is not among transformers' outputs; capture it.
        final_norm = self.hf.base_model.norm
        final_norm.register_forward_pre_hook(lambda _, args: setattr(self, "_captured", args[0]))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)

    @torch.no_grad()
    def states(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.hf(input_ids=input_ids).logits.float()
        assert self._captured is not None
        return self._captured, logits

    def save(self, source: Path, out: Path) -> None:
        """Write ``mtp.*`` weights (and the head's layer count) next to a copy of nothing else."""
        out.mkdir(parents=True, exist_ok=True)
        state = {f"mtp.{k}": v.detach().contiguous() for k, v in self.mtp.state_dict().items()}
        save_file(state, str(out / MTP_WEIGHTS_FILE), metadata={"format": "pt"})


def open_backbone(directory: str | Path) -> OwnBackbone | HFBackbone:
    """Our format when ``model.safetensors`` carries ``mtp.*`` or the config names an MTP layer,
    else a Hugging Face model through ``transformers``."""
    directory = Path(directory)
    raw = json.loads((directory / CONFIG_FILE).read_text()) if (directory / CONFIG_FILE).is_file() else {}
    if raw.get("model_type") == "qwen3" and (directory / WEIGHTS_FILE).is_file() and raw.get(MTP_LAYERS_KEY):
        model = load_model(directory)
        load_mtp_weights(model, directory)
        return OwnBackbone(model)
    backbone = HFBackbone(directory)
    if (directory / MTP_WEIGHTS_FILE).is_file():
        backbone.mtp.load_state_dict(head_tensors(directory / MTP_WEIGHTS_FILE))
    return backbone


def load_mtp_weights(model: Qwen3Model, directory: Path) -> bool:
    """Override the head with ``mtp.safetensors`` when the directory has one; True if it did."""
    path = directory / MTP_WEIGHTS_FILE
    if not path.is_file() or model.mtp is None:
        return False
    model.mtp.load_state_dict(head_tensors(path))
    return True


def head_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The ``mtp.*`` tensors of one safetensors file, keyed as ``MTPHead`` names them (prefix removed)."""
    return {k.removeprefix("mtp."): v for k, v in load_file(str(path)).items() if k.startswith("mtp.")}


def read_head(directory: Path) -> dict[str, torch.Tensor]:
    """The head of a model directory: ``mtp.safetensors`` first, else the ``mtp.*`` of the model file."""
    for name in (MTP_WEIGHTS_FILE, WEIGHTS_FILE):
        if (directory / name).is_file() and (state := head_tensors(directory / name)):
            return state
    raise ValueError(f"no mtp.* weights in {directory}")


def copy_tokenizer(source: Path, out: Path) -> None:
    if source.resolve() == out.resolve():
        return
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            (out / name).write_bytes((source / name).read_bytes())
