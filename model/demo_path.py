"""Where the shipped demo model lives (package data of ``bebop.model``), importable without torch."""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


def demo_model_dir() -> Path:
    """The demo model directory inside the installed package (``model/demo_model/``)."""
    return DEMO_MODEL_DIR
