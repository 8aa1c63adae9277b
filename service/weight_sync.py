"""Former name of :mod:`bebop.service.weight_push`, kept so that trainers written against it still import.

New code imports ``bebop.service.weight_push``.
"""

from .weight_push import WeightBroadcaster, WeightPushError, join_as_rank0, tensor_manifest

__all__ = ["WeightBroadcaster", "WeightPushError", "join_as_rank0", "tensor_manifest"]
