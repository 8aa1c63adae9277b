"""Trainer SDK: ``RolloutClient`` (sync) and ``AsyncRolloutClient`` over the gateway's HTTP API.

    client = RolloutClient("http://127.0.0.1:8000", api_token=..., admin_token=...)
    results = client.rollouts([Prompt(text="12+35=", n=8)], SamplingParams(max_new_tokens=64), seed=1)
    client.update_weights("/ckpt/step-10", version="step-10", pause_mode="retract")

    # or push from the trainer's memory: the trainer becomes rank 0 of a group with every engine
    client.init_weights_group(master_port=29600)
    client.push_weights(dict(model.named_parameters()), version="step-11")

Results are the gateway's pydantic models (``RolloutResult``), so fields are typed and checked.
Errors come back as ``RolloutError`` with the HTTP status and the gateway's message.

``_requests`` builds every request and reads every answer; ``sync`` and ``aio`` only send them.
"""

from ..weight_push import WeightPushError
from ._requests import Prompt, RolloutError, RolloutResult, SamplingParams
from .aio import AsyncRolloutClient
from .sync import RolloutClient

__all__ = [
    "AsyncRolloutClient",
    "Prompt",
    "RolloutClient",
    "RolloutError",
    "RolloutResult",
    "SamplingParams",
    "WeightPushError",
]
