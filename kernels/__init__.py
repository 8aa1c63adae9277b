"""Bebop's kernels: each op is one module with its Triton kernels, launcher and torch twin.

Note: ``bebop.kernels.tv_loss`` is the function (the issue's contract); import the module's other
names with ``from bebop.kernels.tv_loss import ...``, which goes through ``sys.modules``.
"""

from .rejection import ChainSample, chain_rejection_sample, draw_from_probs, sample_from_probs
from .rng import SLOT_ACCEPT, SLOT_DRAFT, SLOT_SAMPLE
from .tv_loss import (
    ce_loss_reference,
    e2e_tv_loss,
    e2e_tv_loss_reference,
    kl_loss_reference,
    reverse_kl_loss_reference,
    tv_loss,
    tv_loss_reference,
)

__all__ = [
    "SLOT_ACCEPT",
    "SLOT_DRAFT",
    "SLOT_SAMPLE",
    "ChainSample",
    "ce_loss_reference",
    "chain_rejection_sample",
    "draw_from_probs",
    "e2e_tv_loss",
    "e2e_tv_loss_reference",
    "kl_loss_reference",
    "reverse_kl_loss_reference",
    "sample_from_probs",
    "tv_loss",
    "tv_loss_reference",
]
