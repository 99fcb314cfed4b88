"""Continuous batching: requests join a running batch of decode steps, and leave it, row by row.

A server decodes for many clients at once. Every client's row advances one token per step, and
the step's weights are read once for all rows (``forward`` on B rows of one token). A request that
arrives while others decode does not wait for them to finish: its prompt runs alone (a prefill,
B = 1), and its rows join the batch before the next step. A row that ends, or whose client went
away, leaves the batch after the step that ended it.

The batch's keys and values live in one cache of ``max_batch`` rows by ``n_positions`` slots. Every row
appends at the same slot each step (``length``), so a row's tokens sit right-aligned, ending at
slot ``length - 1``; the slots before a row's first token are masked out, and positions come from
the mask (``model.positions_from_mask``)::

    slot:      0   1   2   3   4   5   6        length = 7
    row 0      a   a   a   a   a   a   a        (running longest)
    row 1      .   .   .   b   b   b   b        (joined later, with a prompt of 2)
    row 2      .   .   .   .   .   c   c        (just joined)

Attention skips a row's masked slots from the start (``kernels.attention._attend_query``) and the
matrix kernels treat every row on its own, so **a row decodes bit for bit as it would alone**
(``generation.generate`` on its prompt, with the same seed): the batch changes when a token comes,
never which one. Row i of a request draws from ``default_rng([entropy(seed), i])``, as row i of
``generate`` does.

Joining copies the prefilled row into a free row of the cache (rows past the running ones are
free: the kernels get ``k[:B]``, a contiguous view); leaving moves the last row into the gap. Both
copy one row, never the batch. When ``length`` reaches ``n_positions`` the slots that no row uses
any more are dropped from the front (every row moves left).

The cache is allocated whole when the first row joins, and freed when the last one leaves: the
system maps zeroed pages only where something is written (``lazy_zeros``), so its memory grows
with the rows and slots in use, and the batch never reallocates. (Growing it by doubling instead copied the running
rows into fresh pages: 3.9 s for 16 rows of 528 slots at the 350M shape on this machine.)

``Engine`` runs this loop on a thread of its own; ``Job`` is what a client asks for and ``emit``
is how it hears back (``minicodegen.serve`` turns the events into HTTP responses).
"""

from __future__ import annotations

import collections
import mmap
import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from .generation import Row, advance, ready_text
from .model import Cache, Model, forward, new_cache

# ----------------------------------------------------------------------------- what a client asks for


@dataclass(frozen=True)
class Settings:
    """How the rows of one request choose tokens and what they report (OpenAI's fields)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    truncate: bool = False  # CodeGen's own cut (generation.find_end)
    logprobs: int | None = None  # alternatives reported per token; None: no log-probabilities
    echo: bool = False  # the prompt comes first in every choice's text (and log-probabilities)


class TokenLogprob(NamedTuple):
    """One token as a client sees it: its text, its log-probability under the model (None for a
    prompt's first token) and the most likely alternatives at its position."""

    text: str
    logprob: float | None
    top: dict[str, float] | None


class Piece(NamedTuple):
    """Event: more text of choice ``choice`` (may be empty while text is held back) and the tokens
    produced since the last piece (with log-probabilities when asked)."""

    choice: int
    text: str
    tokens: list[TokenLogprob]


class Done(NamedTuple):
    """Event: choice ``choice`` ended: "stop" (end of text, a stop string or CodeGen's cut) or
    "length" (max_tokens or the model's window); ``completion_tokens`` generated in all."""

    choice: int
    finish_reason: str
    completion_tokens: int


class Failed(NamedTuple):
    """Event: the request could not be completed (the message says why); no more events follow."""

    message: str


Event = Piece | Done | Failed


@dataclass(eq=False)
class Job:
    """A request: ``n`` choices for each of ``prompts`` (token ids), numbered prompt-major as OpenAI
    numbers them (choice = prompt index · n + j). ``emit`` is called from the engine's thread.
    Setting ``cancelled`` frees the job's rows at the next step."""

    prompts: list[list[int]]
    n: int
    settings: Settings
    emit: Callable[[Event], None]
    seed: int | None = None
    cancelled: bool = False
    entropy: int | None = None  # the generators' entropy; None: from seed (SeedSequence(seed).entropy)
    first: int = 0  # choice c draws from default_rng([entropy, first + c])

    def __post_init__(self) -> None:
        if self.entropy is None:
            self.entropy = np.random.SeedSequence(self.seed).entropy

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


# ----------------------------------------------------------------------------- the batch's cache


@dataclass
class Slots:
    """The batch's keys and values: room for ``rows_cap`` rows of ``cap`` slots; rows [0, B) run."""

    k: list[np.ndarray]  # n_layer × [rows_cap, H, cap, D] float32
    v: list[np.ndarray]
    mask: np.ndarray  # [rows_cap, cap] int8 (1 where a row has a token)
    length: int = 0  # slots filled (the same for every row)

    def view(self, B: int) -> Cache:
        """The first B rows as a model.Cache (views: forward writes into these arrays)."""
        return Cache([a[:B] for a in self.k], [a[:B] for a in self.v], self.mask[:B], self.length)


def lazy_zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeros whose memory the system maps 4 KiB at a time, as it is first written: an anonymous
    mapping that declines huge pages. (NumPy asks for 2 MiB pages for large arrays, and then the
    first write anywhere in 2 MiB maps and clears all of it: placing a 127-token row in the 350M
    shape's cache took 212 ms and 10 MiB per layer array, against 0.4 ms and 1 MiB so.)"""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, max(size, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype, count=int(np.prod(shape))).reshape(shape)


def empty_slots(model: Model, rows_cap: int, cap: int) -> Slots:
    cfg = model.config
    shape = (rows_cap, cfg.n_head, cap, cfg.head_dim)
    return Slots([lazy_zeros(shape, np.float32) for _ in range(cfg.n_layer)],
                 [lazy_zeros(shape, np.float32) for _ in range(cfg.n_layer)], lazy_zeros((rows_cap, cap), np.int8))


def shift(s: Slots, B: int, by: int) -> None:
    """Moves rows [0, B) by ``by`` slots: right (by > 0, to make room before them for a longer
    prompt) or left (by < 0, dropping slots no row uses); ``length`` moves with them."""
    L = s.length
    if by > 0:
        for a in s.k + s.v:
            a[:B, :, by:L + by] = a[:B, :, :L].copy()
        s.mask[:B, by:L + by] = s.mask[:B, :L].copy()
        s.mask[:B, :by] = 0
    elif by < 0:
        for a in s.k + s.v:
            a[:B, :, :L + by] = a[:B, :, -by:L].copy()
        s.mask[:B, :L + by] = s.mask[:B, -by:L].copy()
    s.length = L + by
    s.mask[:B, s.length:] = 0


def place(s: Slots, b: int, one: Cache) -> None:
    """Row b becomes the single row of ``one`` (a prefilled prompt), right-aligned at ``length``
    (which must be at least the prompt's length)."""
    T, L = one.length, s.length
    for a, c in zip(s.k + s.v, one.k + one.v):
        a[b, :, L - T:L] = c[0, :, :T]
    s.mask[b, :] = 0
    s.mask[b, L - T:L] = one.mask[0, :T]


def move(s: Slots, src: int, dst: int) -> None:
    """Row src is copied into row dst (to fill the gap a leaving row leaves)."""
    L = s.length
    for a in s.k + s.v:
        a[dst, :, :L] = a[src, :, :L]
    s.mask[dst] = s.mask[src]


# ----------------------------------------------------------------------------- the engine


@dataclass(eq=False)
class Seq:
    """A running row: choice ``choice`` of ``job``."""

    job: Job
    choice: int
    row: Row
    sent: int = 0  # characters of row.text already emitted


def log_softmax(z: np.ndarray) -> np.ndarray:  # [V] -> [V] float64
    z = z.astype(np.float64)
    m = z.max()
    return z - (m + np.log(np.exp(z - m).sum()))


class Engine:
    """Runs the batch: ``submit`` jobs from any thread; ``run`` (on one thread) admits them and
    steps the batch until ``stop`` is set; ``step`` does one round of it (tests call it directly).

    ``max_batch`` rows decode together at most; jobs beyond wait in order of arrival. A job's
    rows may join over several steps when the batch is nearly full."""

    def __init__(self, model: Model, max_batch: int = 16) -> None:
        if model.tokenizer is None:
            raise ValueError(f"{model.source or 'model'} has no tokenizer: a completion server needs one")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.max_batch = model, max_batch
        self.cond = threading.Condition()
        self.waiting: collections.deque[tuple[Job, int, list[int]]] = collections.deque()  # job, prompt, choices left
        self.prefilled: dict[tuple[int, int], tuple[Cache, list[int], np.ndarray]] = {}  # (job id, prompt) -> kept prefill
        self.seqs: list[Seq] = []
        self.slots: Slots | None = None
        self.counts: dict[str, float] = {"steps": 0, "admitted": 0, "peak_rows": 0, "cancelled_rows": 0,
                                         "prefill_s": 0.0, "decode_s": 0.0}  # fmt: skip

    # -- the client side (any thread)

    def submit(self, job: Job) -> None:
        """Queues a job; its events start coming once a row of it is prefilled."""
        with self.cond:
            for p in range(len(job.prompts)):
                self.waiting.append((job, p, [p * job.n + j for j in range(job.n)]))
            self.cond.notify()

    def stats(self) -> dict[str, float]:
        """Rows decoding now, requests waiting, and counters since start (seconds spent in
        prefills and in decode steps among them)."""
        with self.cond:
            waiting = len({id(j) for j, _, _ in self.waiting})
            return {"rows": len(self.seqs), "waiting": waiting} | self.counts

    # -- the engine's thread

    def run(self, stop: threading.Event) -> None:
        """Admits and steps until ``stop`` is set; a failure fails the jobs it touched, not the loop."""
        while not stop.is_set():
            with self.cond:
                if not self.seqs and not self.waiting:
                    self.cond.wait(0.1)
                    continue
            self.step()

    def step(self) -> None:
        """One round: drop cancelled rows, admit one waiting prompt if there is room, then one
        decode step of every running row."""
        self._drop(lambda s: s.job.cancelled, count="cancelled_rows")
        self._admit_one()
        if self.seqs:
            try:
                self._decode()
            except Exception as e:  # noqa: BLE001 - reported to the clients; the server keeps serving
                for job in {id(s.job): s.job for s in self.seqs}.values():
                    job.emit(Failed(f"decoding failed: {type(e).__name__}: {e}"))
                    job.cancelled = True
                self._drop(lambda s: True)

    def _admit_one(self) -> None:
        with self.cond:
            while self.waiting and self.waiting[0][0].cancelled:
                job, p, _ = self.waiting.popleft()
                self.prefilled.pop((id(job), p), None)
            if not self.waiting or len(self.seqs) >= self.max_batch:
                return
            job, p, left = self.waiting[0]
            take, rest = left[: self.max_batch - len(self.seqs)], left[self.max_batch - len(self.seqs):]
            if rest:
                self.waiting[0] = (job, p, rest)
            else:
                self.waiting.popleft()
        try:
            self._join(job, p, take, last=not rest)
        except Exception as e:  # noqa: BLE001
            job.emit(Failed(f"prompt {p} failed: {type(e).__name__}: {e}"))
            job.cancelled = True

    def _join(self, job: Job, p: int, choices: list[int], last: bool) -> None:
        """Prefills prompt p of job (once, kept while choices of it still wait), chooses each
        choice's first token and puts the rows that go on into the batch."""
        model, st = self.model, job.settings
        key = (id(job), p)
        if key in self.prefilled:
            one, echo_lp, first = self.prefilled[key]
        else:
            t0 = time.perf_counter()
            ids = job.prompts[p]
            one = new_cache(model.config, 1, len(ids))
            want_prompt_lp = st.echo and st.logprobs is not None
            z = forward(model, [ids], cache=one, last_only=not want_prompt_lp)[0]  # [T or 1, V]
            echo_lp = self._prompt_logprobs(ids, z, st.logprobs) if want_prompt_lp else []
            first = z[-1].copy()
            self.prefilled[key] = (one, echo_lp, first)
            self.counts["prefill_s"] += time.perf_counter() - t0
        if last:
            del self.prefilled[key]
        self.counts["admitted"] += len(choices)
        prompt = job.prompts[p]
        for c in choices:
            seq = Seq(job, c, Row(list(prompt), [], np.random.default_rng([job.entropy, job.first + c])))
            if st.echo:
                job.emit(Piece(c, self.model.tokenizer.decode(prompt), echo_lp))
            self._advance(seq, first.copy())
            if seq.row.done:
                continue
            B = len(self.seqs)
            if self.slots is None:
                self.slots = empty_slots(model, self.max_batch, model.config.n_positions)
            if one.length > self.slots.length:
                shift(self.slots, B, one.length - self.slots.length)
            place(self.slots, B, one)
            self.seqs.append(seq)
            self.counts["peak_rows"] = max(self.counts["peak_rows"], len(self.seqs))

    def _decode(self) -> None:
        """One token for every running row: forward on B rows of one token, then each row chooses."""
        t0 = time.perf_counter()
        B, s, n_pos = len(self.seqs), self.slots, self.model.config.n_positions
        if s.length + 1 > n_pos:  # drop the slots before the earliest first token of a running row
            first = int(np.argmax(s.mask[:B, : s.length].any(axis=0)))
            shift(s, B, -first)
        nxt = np.array([[q.row.ids[-1]] for q in self.seqs], np.int64)
        logits = forward(self.model, nxt, cache=s.view(B), last_only=True)[:, -1]  # [B, V]
        s.length += 1
        self.counts["steps"] += 1
        for q, z in zip(self.seqs, logits):
            if not q.job.cancelled:
                self._advance(q, z)
        self._drop(lambda q: bool(q.row.done))
        self.counts["decode_s"] += time.perf_counter() - t0

    def _advance(self, q: Seq, z: np.ndarray) -> None:
        """Row q chooses its next token from its logits z [V] and its job hears of it."""
        st, r, tok_vocab = q.job.settings, q.row, self.model.tokenizer.vocab_size
        z[tok_vocab:] = -np.inf  # padding rows of the embedding: no text
        tok = advance(self.model, r, z, st.temperature, st.top_k, st.top_p, st.repetition_penalty, st.stop, st.truncate)
        if not r.done and (len(r.ids) >= st.max_tokens or len(r.prompt) + len(r.ids) >= self.model.config.n_positions):
            r.done = "length"
        if r.done:
            r.text += r.decoder.decode(b"", final=True)
        tokens = [self._token_logprob(z, tok, st.logprobs)] if st.logprobs is not None else []
        upto = ready_text(r, st.stop, st.truncate)
        q.job.emit(Piece(q.choice, r.text[q.sent:upto], tokens))
        q.sent = max(q.sent, upto)
        if r.done:
            q.job.emit(Done(q.choice, "length" if r.done == "length" else "stop", len(r.ids)))

    def _token_logprob(self, z: np.ndarray, tok: int, top: int) -> TokenLogprob:
        tk = self.model.tokenizer
        lp = log_softmax(z)
        alts = np.argsort(-lp, kind="stable")[:top] if top > 0 else []
        return TokenLogprob(tk.decode([tok]), float(lp[tok]), {tk.decode([int(a)]): float(lp[a]) for a in alts})

    def _prompt_logprobs(self, ids: list[int], z: np.ndarray, top: int) -> list[TokenLogprob]:
        """The prompt's tokens with the log-probability of each given the ones before it (z [T, V])."""
        z = z.copy()
        z[:, self.model.tokenizer.vocab_size:] = -np.inf
        out = [TokenLogprob(self.model.tokenizer.decode([ids[0]]), None, None)]
        return out + [self._token_logprob(z[t - 1], ids[t], top) for t in range(1, len(ids))]

    def _drop(self, leaves: Callable[[Seq], bool], count: str | None = None) -> None:
        """Removes the rows for which ``leaves`` is true: the last row moves into each gap."""
        for b in reversed(range(len(self.seqs))):
            if not leaves(self.seqs[b]):
                continue
            last = len(self.seqs) - 1
            if b != last:
                move(self.slots, last, b)
                self.seqs[b] = self.seqs[last]
            self.seqs.pop()
            if count:
                self.counts[count] += 1
        if not self.seqs:
            self.slots = None  # the memory goes back while nobody asks
