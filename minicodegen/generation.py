"""Generation: choosing tokens one at a time over the KV cache, and scoring text.

The choice of the next token follows transformers' ``generate``: the repetition penalty first,
then temperature, top-k and top-p, then a draw (or the argmax when temperature is 0)::

    logits --repetition_penalty--> --/temperature--> --top_k--> --top_p--> softmax --> draw

Every function here works on plain arrays; ``generate``, ``stream`` and ``score`` are the entry
points.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from .model import Model, forward, new_cache
from .tokenizer import CODEGEN_TRUNCATE_PATTERNS, truncate



# ----------------------------------------------------------------------------- choosing a token


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:  # [V], int [n] -> [V]
    """CTRL's penalty, as transformers applies it: for every token already seen, a positive logit
    is divided by ``penalty`` and a negative one multiplied by it (so > 1 discourages repeats)."""
    if penalty == 1.0 or len(seen) == 0:
        return logits
    out = logits.copy()
    ids = np.unique(seen)
    s = out[ids]
    out[ids] = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty))
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:  # [..., V] -> [..., V]
    """Keeps the k largest logits (and any tied with the k-th), sets the rest to -inf. k=0: all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:  # [V] -> [V]
    """Nucleus filter: keeps the most likely tokens whose probabilities add up to at least p.

    As transformers does it: sort ascending, and drop every token whose cumulative probability
    (from the least likely up) is at most 1 - p; the most likely token always stays.

    Only the likeliest tokens can stay, so only they are sorted: the m largest logits (ties with
    the m-th included), m = 64, 1024, ..., until the others hold less than 1 - p of the mass, so
    that every one of them is dropped as the full sort drops it (8.6 ms a token at V = 50,295
    sorting all of them; about 1 ms so).
    """
    if p >= 1.0:
        return logits
    probs = softmax64(logits)
    V, m = len(logits), 64
    while True:
        if m >= V:
            cand = np.arange(V)
            break
        cand = np.flatnonzero(logits >= np.partition(logits, V - m)[V - m])
        if probs.sum() - probs[cand].sum() < 1.0 - p - 1e-9:  # the mass of the others
            break
        m *= 16
    order = cand[np.argsort(logits[cand], kind="stable")]  # ascending
    cum = (probs.sum() - probs[cand].sum()) + np.cumsum(probs[order])
    keep = order[cum > 1.0 - p]
    keep = order[-1:] if len(keep) == 0 else keep  # the most likely token always stays
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def softmax64(logits: np.ndarray) -> np.ndarray:  # [V] -> [V] float64 probabilities (-inf -> 0)
    z = logits.astype(np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def kept_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:  # [V] -> [n], [n]
    """The tokens a draw can give (ascending ids) and their probabilities:
    softmax(top_p(top_k(logits / temperature))) over the tokens those filters keep."""
    z = top_p_filter(top_k_filter(logits / np.float32(temperature), top_k), top_p)
    ids = np.flatnonzero(z != -np.inf)
    return ids, softmax64(z[ids])


def sample_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:  # [V] -> [V]
    """The distribution a token is drawn from: softmax(top_p(top_k(logits / temperature)))."""
    ids, probs = kept_probs(logits, temperature, top_k, top_p)
    out = np.zeros(len(logits))
    out[ids] = probs
    return out


def choose(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int, top_p: float) -> int:  # [V] -> id
    """Greedy when temperature is 0, else one draw (inverse CDF of one uniform number) over the
    kept tokens only."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    ids, probs = kept_probs(logits, temperature, top_k, top_p)
    return int(ids[min(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"), len(ids) - 1)])


# ----------------------------------------------------------------------------- where a completion ends


def find_end(text: str, stop: Sequence[str], codegen_truncate: bool) -> int | None:
    """Where the completion ``text`` ends for good (a stop string or a truncation cut), or None."""
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    if codegen_truncate:
        cut = len(truncate(text, CODEGEN_TRUNCATE_PATTERNS))
        if cut < len(text):
            ends.append(cut)
    return min(ends) if ends else None


_LINE_STARTS = ("def", "print", "#", "'''", '"""')


def holdback(text: str, stop: Sequence[str], codegen_truncate: bool) -> int:
    r"""How many trailing characters a stream must keep back: they might begin a stop string or a
    truncation cut that the next tokens complete.

    >>> holdback("x = 1\n\n", [], True)       # a third newline would cut before these two
    2
    >>> holdback("x = 1\nde", [], True)        # "def" at a line start may be a second def
    2
    >>> holdback("x = 1  # the en", ["# the end"], False)
    8
    """
    keep = 0
    for s in list(stop) + (["<|endoftext|>"] if codegen_truncate else []):
        keep = max([keep] + [n for n in range(1, len(s)) if text.endswith(s[:n])])
    if codegen_truncate:
        last_line = text[text.rfind("\n") + 1 :]
        if last_line == "":
            keep = max(keep, min(2, len(text) - len(text.rstrip("\n"))))
        elif any(w.startswith(last_line) for w in _LINE_STARTS):
            keep = max(keep, len(last_line))
    return keep


# ----------------------------------------------------------------------------- the decoding loop


@dataclass
class Row:
    """One prompt's state while decoding."""

    prompt: list[int]
    ids: list[int]  # new tokens so far
    rng: np.random.Generator
    text: str = ""  # decoded new tokens (complete UTF-8 characters only)
    end: int | None = None  # where the text ends for good (stop string / truncation), if found
    done: str = ""  # why this row stopped: "eos", "stop", "length", or "" while running
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int, top_p: float, repetition_penalty: float) -> None:
    """ValueError naming the argument that is out of range."""
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty!r}")


def advance(model: Model, r: Row, logits: np.ndarray, temperature: float, top_k: int, top_p: float,
            repetition_penalty: float, stop: Sequence[str], codegen_truncate: bool) -> int:  # [V] -> id
    """Chooses row r's next token from its logits and appends it: to ``r.ids``, its text to
    ``r.text`` and, if it ends the row, the reason to ``r.done`` ("eos", or "stop" with ``r.end``)."""
    z = logits
    if repetition_penalty != 1.0:
        z = apply_repetition_penalty(z, np.array(r.prompt + r.ids, np.int64), repetition_penalty)
    tok = choose(z, r.rng, temperature, top_k, top_p)
    r.ids.append(tok)
    if tok == model.config.eos_token_id:
        r.done = "eos"
    elif model.tokenizer is not None and tok < model.tokenizer.vocab_size:
        r.text += r.decoder.decode(model.tokenizer.decode_bytes([tok]))
        if stop or codegen_truncate:
            r.end = find_end(r.text, stop, codegen_truncate)
            r.done = "stop" if r.end is not None else ""
    return tok


def decode_steps(
    model: Model,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    codegen_truncate: bool = False,
    stats: dict[str, float] | None = None,
    text_only: bool = False,
) -> Iterator[list[Row]]:
    """Runs the prompts together (left padding) and yields the rows after every new token.

    Row b draws from its own generator seeded with (seed, b), so a prompt samples the same tokens
    alone or at row 0 of a batch. ``stats``, if given, receives ``prompt_tokens``, ``prefill_s``
    (prompt forward pass and first choice), ``new_tokens`` and ``decode_s`` (the rest).
    ``text_only`` never chooses an id the tokenizer cannot decode (CodeGen's embedding has padding
    rows past the tokenizer's last id); without it the choice is transformers' exactly.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    cfg = model.config
    needs_text = bool(stop) or codegen_truncate or text_only
    if needs_text and model.tokenizer is None:
        raise ValueError(f"{model.source or 'model'} has no tokenizer: stop strings and truncation need one")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: give at least one token")
    T = max(len(p) for p in prompts)
    if T >= cfg.n_positions:
        raise ValueError(f"prompt of {T} tokens leaves no room: n_positions is {cfg.n_positions}")
    entropy = np.random.SeedSequence(seed).entropy
    rows = [Row(list(p), [], np.random.default_rng([entropy, b])) for b, p in enumerate(prompts)]
    B = len(rows)
    ids = np.full((B, T), cfg.eos_token_id, np.int64)
    mask = np.zeros((B, T), np.int8)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :], mask[b, T - len(p) :] = p, 1
    steps = min(max_new_tokens, cfg.n_positions - T)
    cache = new_cache(cfg, B, T + steps)
    if steps == 0:
        return
    t0 = time.perf_counter()
    logits = forward(model, ids, attention_mask=mask, cache=cache, last_only=True)[:, -1]  # [B, V]
    decodable = model.tokenizer.vocab_size if text_only else cfg.vocab_size
    for step in range(steps):
        logits[:, decodable:] = -np.inf
        nxt = np.full((B, 1), cfg.eos_token_id, np.int64)
        for b, r in enumerate(rows):
            if r.done:
                continue
            nxt[b, 0] = advance(model, r, logits[b], temperature, top_k, top_p, repetition_penalty, stop,
                                codegen_truncate)  # fmt: skip
            if not r.done and step == steps - 1:
                r.done = "length"
            if r.done:
                r.text += r.decoder.decode(b"", final=True)
        if stats is not None:
            t1 = time.perf_counter()
            if step == 0:
                stats |= {"prompt_tokens": int(mask.sum()), "prefill_s": t1 - t0, "new_tokens": 0, "decode_s": 0.0}
            else:
                stats |= {"new_tokens": step, "decode_s": t1 - t0 - stats["prefill_s"]}
        yield rows
        if all(r.done for r in rows):
            return
        logits = forward(model, nxt, cache=cache, last_only=True)[:, -1]


def _prompt_ids(model: Model, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError(f"{model.source or 'model'} has no tokenizer: pass token ids instead of text")
        return model.tokenizer.encode(prompt)
    return [int(i) for i in prompt]


def _is_batch(prompt: Any) -> bool:
    return not isinstance(prompt, str) and len(prompt) > 0 and not isinstance(prompt[0], (int, np.integer))


def generate(
    model: Model,
    prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    truncate: bool = False,
) -> Any:
    """Continues a prompt; arguments mean what they mean in transformers' ``generate``.

    - ``prompt``: text (tokenized with the model's tokenizer), token ids, or a list of either (a
      batch, run together with left padding; in greedy mode each row equals its prompt alone).
    - ``temperature`` 0 is greedy; otherwise sampling with ``top_k`` (0 = off) and ``top_p``
      (1 = off), reproducible for a given ``seed``.
    - ``stop``: strings that end a completion (cut before them); ``truncate``: CodeGen's own cut
      (``tokenizer.truncate`` with ``CODEGEN_TRUNCATE_PATTERNS``). Generation of a row ends at EOS, a stop or a cut.

    Returns the completion: a ``str`` for a text prompt (stop/cut applied, no EOS), the new ids
    for an id prompt (with EOS if it came), or a list of those for a batch.
    """
    batch = _is_batch(prompt)
    prompts = list(prompt) if batch else [prompt]
    ids = [_prompt_ids(model, p) for p in prompts]
    rows: list[Row] = [Row(p, [], np.random.default_rng(0)) for p in ids]  # as they stay if max_new_tokens == 0
    text_only = any(isinstance(p, str) for p in prompts)
    for rows in decode_steps(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
                             truncate, text_only=text_only):  # fmt: skip
        pass
    out = [completion_text(r) if isinstance(p, str) else r.ids for p, r in zip(prompts, rows)]
    return out if batch else out[0]


def completion_text(row: Row) -> str:
    """The final text of a row: decoded new tokens, cut at a stop string or truncation point."""
    return row.text if row.end is None else row.text[: row.end]


def ready_text(row: Row, stop: Sequence[str], codegen_truncate: bool) -> int:
    """How much of ``row.text`` a stream can send: all of the completion once the row is done,
    else all but what might begin a stop string or a truncation cut (``holdback``)."""
    if row.done:
        return len(completion_text(row))
    return len(row.text) - holdback(row.text, stop, codegen_truncate)


def stream(
    model: Model,
    prompt: str | Sequence[int],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    truncate: bool = False,
    stats: dict[str, float] | None = None,
) -> Iterator[str]:
    """Yields the completion's text as it is produced; the pieces join to ``generate``'s result.

    A multi-byte character split across tokens comes out whole, and text that might begin a stop
    string or a truncation cut is held back until the next tokens decide.
    """
    if model.tokenizer is None:
        raise ValueError(f"{model.source or 'model'} has no tokenizer: streaming text needs one")
    sent = 0
    row = None
    for rows in decode_steps(model, [_prompt_ids(model, prompt)], max_new_tokens, temperature, top_k, top_p,
                             repetition_penalty, seed, stop, truncate, stats, text_only=True):  # fmt: skip
        row = rows[0]
        upto = ready_text(row, stop, truncate)
        if upto > sent:
            yield row.text[sent:upto]
            sent = upto


# ----------------------------------------------------------------------------- scoring


class Score(NamedTuple):
    tokens: list[int]  # the text's token ids
    logprobs: np.ndarray  # float64 [n]: log p(token | the tokens before it in its window); NaN where unscored
    nll: float  # mean negative log-likelihood over the scored tokens (nats per token)


def score(model: Model, text: str | Sequence[int], window: int | None = None) -> Score:
    """Log-likelihood of a text under the model ("compute the likelihood" of code).

    The tokens are cut into consecutive windows of ``window`` tokens (default n_positions); each
    window is one forward pass, and every token but the first of its window is scored given the
    ones before it in that window.
    """
    ids = _prompt_ids(model, text)
    if len(ids) < 2:
        raise ValueError(f"text of {len(ids)} token(s): scoring needs at least two")
    window = window or model.config.n_positions
    logprobs = np.full(len(ids), np.nan)
    for start in range(0, len(ids), window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            continue
        z = forward(model, [chunk])[0, :-1].astype(np.float64)  # [n-1, V]
        z -= z.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=-1))
        logprobs[start + 1 : start + len(chunk)] = z[np.arange(len(chunk) - 1), chunk[1:]] - lse
    return Score(ids, logprobs, float(-np.nanmean(logprobs)))
