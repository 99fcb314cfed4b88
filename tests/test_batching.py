"""Continuous batching (minicodegen.batching) against generation.generate: rows that join a running
batch at any step, with prompts shorter or longer than the batch so far, and leave it at any step,
get the very tokens they get alone, greedy or sampled with a seed; log-probabilities against
generation.score; cancelled rows leave at the next step; the cache drops unused slots at the
model's window."""

from __future__ import annotations

import numpy as np
import pytest

import minicodegen
from minicodegen import batching
from minicodegen.batching import Done, Engine, Job, Piece, Settings
from minicodegen.kernels import STREAM_MAX_T

PROMPTS = [
    "def add(a, b):",
    "import numpy as np\n\ndef mean(xs):\n    ",
    "class Stack:\n    def __init__(self):",
    "# print hello\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\ndef main():\n    for i in",
    "x",
]


@pytest.fixture(scope="module")
def tiny():
    return minicodegen.load("tiny")


@pytest.fixture(scope="module")
def tiny_f32():
    return minicodegen.load("tiny", dtype="float32")


def submit(eng: Engine, prompt: str, settings: Settings, n: int = 1, seed: int | None = None) -> tuple[Job, list]:
    events: list = []
    job = Job([eng.model.tokenizer.encode(prompt)], n, settings, events.append, seed)
    eng.submit(job)
    return job, events


def text_of(events: list, choice: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, Piece) and e.choice == choice)


def drain(eng: Engine, limit: int = 5000) -> None:
    for _ in range(limit):
        if not eng.seqs and not eng.waiting:
            return
        eng.step()
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("which", ["int8", "float32"])
def test_rows_that_join_and_leave_a_running_batch_get_the_tokens_they_get_alone(which, tiny, tiny_f32):
    """Six requests join one by one while earlier ones decode (prompts of 1 to 40 tokens: some
    shorter than the batch so far, some longer, which shifts the running rows), with different
    max_tokens so that they leave at different steps, greedy and sampled; the float32 model with
    more than kernels.STREAM_MAX_T rows takes the head in chunks; every text equals generate's."""
    model = tiny if which == "int8" else tiny_f32
    eng = Engine(model, max_batch=12)
    runs = []
    for i, p in enumerate(PROMPTS * 2):
        st = Settings(max_tokens=6 + 5 * i, temperature=0.0 if i % 3 == 0 else 0.9, top_p=0.95, top_k=40 * (i % 2))
        runs.append((p, st, submit(eng, p, st, seed=100 + i)))
        eng.step()
        eng.step()
    drain(eng)
    assert eng.counts["peak_rows"] > STREAM_MAX_T
    assert eng.slots is None  # everything left: the cache went back
    for p, st, (job, events) in runs:
        alone = minicodegen.generate(model, p, st.max_tokens, st.temperature, st.top_k, st.top_p, seed=job.seed)
        assert text_of(events) == alone, p
        (done,) = [e for e in events if isinstance(e, Done)]
        assert done.finish_reason in ("stop", "length")


def test_n_choices_are_generates_rows_and_the_batch_may_be_smaller_than_a_request(tiny):
    """n = 5 choices with max_batch 2: the request joins two rows at a time (its prompt prefilled
    once); choice i draws as row i of generate's batch of the same prompt."""
    eng = Engine(tiny, max_batch=2)
    st = Settings(max_tokens=12, temperature=1.0)
    job, events = submit(eng, PROMPTS[1], st, n=5, seed=3)
    drain(eng)
    assert eng.counts["peak_rows"] == 2
    alone = minicodegen.generate(tiny, [PROMPTS[1]] * 5, 12, temperature=1.0, seed=3)
    assert [text_of(events, c) for c in range(5)] == alone
    assert len(set(alone)) > 1  # the choices differ: each has its own draws


def test_log_probabilities_are_the_models(tiny_f32):
    """token_logprobs of greedy tokens and of an echoed prompt equal log-softmax of the model's
    logits, as generation.score computes them over prompt + completion (float sums of the decode
    and the prompt paths differ in the last bits); the greedy token is the top alternative.

    float32 weights: with int8 ones, rows of activations are rounded to 8 bits, and a last-bit
    difference between the two paths can move a row's value to the next step (on an AMD EPYC,
    family 26, three of the 51 log-probabilities then differed by up to 7.1e-3)."""
    eng = Engine(tiny_f32, max_batch=4)
    st = Settings(max_tokens=10, temperature=0.0, logprobs=3, echo=True)
    job, events = submit(eng, PROMPTS[4], st)
    drain(eng)
    tokens = [t for e in events if isinstance(e, Piece) for t in e.tokens]
    prompt = tiny_f32.tokenizer.encode(PROMPTS[4])
    ids = prompt + tiny_f32.tokenizer.encode(text_of(events)[len(PROMPTS[4]):])
    ref = minicodegen.score(tiny_f32, ids[: len(prompt) + 10])
    assert tokens[0].logprob is None
    got = np.array([t.logprob for t in tokens[1:]])
    np.testing.assert_allclose(got, ref.logprobs[1:], atol=2e-3)
    for t in tokens[len(prompt):]:
        assert max(t.top.values()) == pytest.approx(t.logprob) and len(t.top) == 3


def test_cancelled_rows_leave_at_the_next_step_and_stop_strings_end_a_row(tiny):
    eng = Engine(tiny, max_batch=4)
    long_job, long_events = submit(eng, PROMPTS[0], Settings(max_tokens=200, temperature=0.0))
    short_job, short_events = submit(eng, PROMPTS[1], Settings(max_tokens=50, temperature=0.0, stop=("line of",)))
    for _ in range(6):
        eng.step()
    assert len(eng.seqs) == 2
    long_job.cancelled = True
    eng.step()
    assert [q.job for q in eng.seqs] == [short_job] and eng.counts["cancelled_rows"] == 1
    drain(eng)
    assert not [e for e in long_events if isinstance(e, Done)]  # a cancelled row just stops
    (done,) = [e for e in short_events if isinstance(e, Done)]
    text = text_of(short_events)
    assert done.finish_reason == "stop" and text.endswith("the ") and "line of" not in text
    assert text == minicodegen.generate(tiny, PROMPTS[1], 50, stop=["line of"])


def test_the_batch_drops_unused_slots_at_the_window(tiny):
    """A row that runs to the end of tiny's window of 512 while others joined after it: the batch's
    common length would pass 512, so the slots before the earliest running row are dropped (a
    shift of every row), and the late rows still get their own tokens."""
    n_pos = tiny.config.n_positions
    eng = Engine(tiny, max_batch=4)
    first = "def f(x):\n" * 30
    jobs = [(first, Settings(max_tokens=n_pos - len(tiny.tokenizer.encode(first)), temperature=0.0),
             submit(eng, first, Settings(max_tokens=n_pos - len(tiny.tokenizer.encode(first)), temperature=0.0)))]
    for _ in range(150):
        eng.step()
    late = PROMPTS[4] * 3
    st = Settings(max_tokens=300, temperature=0.7)
    jobs.append((late, st, submit(eng, late, st, seed=9)))
    lengths = []
    while eng.seqs or eng.waiting:
        eng.step()
        if eng.slots is not None:
            lengths.append(eng.slots.length)
    assert max(lengths) == n_pos and min(lengths[lengths.index(n_pos):]) < n_pos  # it reached the window, then shifted
    for p, st, (job, events) in jobs:
        assert text_of(events) == minicodegen.generate(tiny, p, st.max_tokens, st.temperature, seed=job.seed)
        assert [e.finish_reason for e in events if isinstance(e, Done)] in (["length"], ["stop"])


def test_engine_arguments(tiny):
    with pytest.raises(ValueError, match="max_batch"):
        Engine(tiny, max_batch=0)
    no_tok = minicodegen.Model(tiny.config, dict(tiny.weights), None, source="weights only")
    with pytest.raises(ValueError, match="no tokenizer"):
        Engine(no_tok)
    assert batching.log_softmax(np.array([0.0, np.log(3.0)], np.float32)) == pytest.approx(np.log([0.25, 0.75]))
