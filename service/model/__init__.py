"""The Qwen3-architecture model with its MTP draft head, and Hugging Face format I/O."""

from bebop.service.model.decoder import DecoderOutput, LayerCache, ModelConfig, PoolCache, Qwen3Model
from bebop.service.model.hf_io import load_model, save_model
from bebop.service.model.mtp import MTPHead, MTPOutput

__all__ = [
    "DecoderOutput",
    "LayerCache",
    "MTPHead",
    "MTPOutput",
    "ModelConfig",
    "PoolCache",
    "Qwen3Model",
    "load_model",
    "save_model",
]
