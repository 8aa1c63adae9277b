"""Where the shipped demo model lives (package data of ``bebop.service``), importable without torch."""

from pathlib import Path


def demo_model_dir() -> Path:
    """The demo model directory inside the installed package (``service/demo_model/``)."""
    import bebop.service

    return Path(bebop.service.__file__).resolve().parent / "demo_model"
