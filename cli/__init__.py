"""The ``bebop`` command: the one place that knows every part (service, training, benchmarks)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
