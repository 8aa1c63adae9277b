"""The ``bebop`` command: the one place that knows every part (service, training, benchmarks)."""

from .main import main

__all__ = ["main"]
