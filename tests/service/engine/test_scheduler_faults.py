"""The scheduler under failures: a request that breaks a prefill or a step ends alone, with an error;
every other request keeps decoding, and no request is left without a final event.

The runner is a stand-in with the real runner's interface (prefill, prefill_group, step, release,
free_slots): it emits token ``position % 7`` and raises for any sequence whose prompt starts with
POISON; like the real one, a failing group prefill takes no slot.
"""

import threading

import pytest

from bebop.service.engine.runner import SeqState, StepOutput
from bebop.service.engine.sampling import SamplingParams
from bebop.service.engine.scheduler import Request, Scheduler

POISON = 666


class FakeRunner:
    def __init__(self, slots: int, fail_in: str):
        self.free = list(range(slots))
        self.fail_in = fail_in  # "prefill" or "step"
        self.poisoned: set[int] = set()

    def free_slots(self) -> int:
        return len(self.free)

    def release(self, state: SeqState) -> None:
        self.poisoned.discard(state.slot)
        self.free.append(state.slot)

    def prefill(self, prompt, params, seed, resume_token=None, history=None):
        if prompt[0] == POISON and self.fail_in == "prefill":
            raise OverflowError("Python int too large to convert to C long")
        slot = self.free.pop()
        if prompt[0] == POISON:
            self.poisoned.add(slot)
        n = len(prompt)
        token = resume_token if resume_token is not None else n % 7
        state = SeqState(slot=slot, params=params, seed=seed, position=n)
        return state, StepOutput(
            tokens=[] if resume_token is not None else [token], logprobs=[0.0], entropies=[0.0]
        )

    def prefill_group(self, prompts, params, seeds):
        if any(p[0] == POISON for p in prompts) and self.fail_in == "prefill":
            raise OverflowError("Python int too large to convert to C long")
        return [self.prefill(p, q, s) for p, q, s in zip(prompts, params, seeds, strict=True)]

    def step(self, states):
        if any(s.slot in self.poisoned for s in states):
            raise RuntimeError("index out of range in self")
        outs = []
        for s in states:
            s.position += 1
            outs.append(StepOutput(tokens=[s.position % 7], logprobs=[0.0], entropies=[0.0]))
        return outs


def run(fail_in: str) -> tuple[dict[str, Request], FakeRunner]:
    runner = FakeRunner(slots=8, fail_in=fail_in)
    sched = Scheduler(runner, eos_token_id=None, max_queue=16)
    done = {}
    finished = threading.Event()

    def on_event(req, final):
        if final:
            done[req.rid] = req
            if len(done) == 4:
                finished.set()

    params = SamplingParams(max_new_tokens=20)
    prompts = {"a": [1, 2], "b": [3], "poison": [POISON, 1], "c": [4, 5, 6]}
    sched.start()
    try:
        for rid, prompt in prompts.items():
            sched.submit(Request(rid=rid, prompt=prompt, params=params, seed=1, on_event=on_event))
        assert finished.wait(30), f"requests without a final event: {set(prompts) - set(done)}"
    finally:
        sched.stop()
    assert not sched.running and not sched.waiting
    return done, runner


@pytest.mark.parametrize("fail_in", ["prefill", "step"])
def test_a_failing_request_ends_alone_and_the_others_finish(fail_in):
    done, runner = run(fail_in)
    poison = done["poison"].finish_reason
    assert poison["type"] == "abort" and poison["status_code"] == 500 and "engine error" in poison["message"]
    for rid in "abc":
        req = done[rid]
        assert req.finish_reason == {"type": "length", "length": 20}, (rid, req.finish_reason)
        # rebuilt rows go on from where they were: the tokens are those of an undisturbed run
        n = len(req.prompt)
        assert req.output == [(n + i) % 7 for i in range(20)], rid
    assert runner.free_slots() == 8  # every slot came back


def test_aborts_racing_submissions_never_kill_the_loop():
    """HTTP threads append to the queue while the loop aborts and finishes requests: every request
    still gets exactly one final event and the loop survives (it used to die with "deque mutated
    during iteration" when a queue look-up compared requests field by field)."""
    runner = FakeRunner(slots=2, fail_in="none")
    sched = Scheduler(runner, eos_token_id=None, max_queue=10_000)
    finals: list[str] = []
    lock = threading.Lock()

    def on_event(req, final):
        if final:
            with lock:
                finals.append(req.rid)

    def submitter(k: int) -> None:
        for i in range(300):
            params = SamplingParams(max_new_tokens=5)
            sched.submit(Request(rid=f"{k}-{i}", prompt=[1, 2], params=params, seed=i, on_event=on_event))

    sched.start()
    try:
        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            sched.call(lambda: sched.abort(None, "stress")).result(timeout=30)
        for t in threads:
            t.join()
        sched.call(lambda: sched.abort(None, "stress")).result(timeout=30)
        assert sched._thread.is_alive()
    finally:
        sched.stop()
    assert sorted(finals) == sorted(f"{k}-{i}" for k in range(4) for i in range(300))
