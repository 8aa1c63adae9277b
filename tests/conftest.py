"""Test-wide set-up: the Triton interpreter must be switched on before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture(scope="session")
def quick_model(tmp_path_factory):
    """A smoke-sized demo model built by the real builder (seconds): tokenizer, backbone, 5 heads."""
    from bebop.training.demo import DemoRecipe, build_demo_model

    recipe = DemoRecipe(corpus_size=300, backbone_iters=30, head_iters=6, finetune_iters=4, max_len=48)
    return build_demo_model(tmp_path_factory.mktemp("demo") / "model", recipe, progress=False)
