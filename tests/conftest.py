"""Test-wide set-up: the Triton interpreter must be switched on before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture(scope="session")
def quick_model(tmp_path_factory):
    """A smoke-sized demo model built by the real builder: tokenizer, backbone, 5 heads.

    Built once per test run, not once per xdist worker: the workers share the parent of their
    base temp directory, and the first one to take the lock builds (a minute or more of CPU on a
    2-core machine) while the others wait and then read the same files (they never write them).
    """
    import fcntl

    from bebop.training.demo import DemoRecipe, build_demo_model

    shared = tmp_path_factory.getbasetemp().parent
    target, done = shared / "quick-demo-model", shared / "quick-demo-model.done"
    with open(shared / "quick-demo-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            recipe = DemoRecipe(
                corpus_size=300, backbone_iters=30, head_iters=6, finetune_iters=4, max_len=48
            )
            build_demo_model(target, recipe, progress=False)
            done.touch()
    return target
