"""The pre-tokenizer splits every code point like Hugging Face `tokenizers`, whatever `regex` is installed.

This file imports `tokenizers` (the reference) but not transformers, so it also runs with the
oldest `regex` release that pyproject allows, which transformers itself refuses to import
beside. CI runs it a second time that way:

    pip install --no-deps --target /tmp/regex-floor "regex==<floor from pyproject>"
    PYTHONPATH=/tmp/regex-floor python -m pytest tests/test_split_classes.py
"""
import json
import re
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from minicodegen.tokenizer import SPLIT_PATTERN, STAND_INS, pre_tokenize, split_classes, stand_ins

ROOT = Path(__file__).resolve().parents[1]
CODEGEN_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.fixture(scope="module")
def pre_tokenizer() -> pre_tokenizers.ByteLevel:
    """The pre-tokenizer of transformers' CodeGenTokenizer (test_tokenizer.py checks it is this one)."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def test_every_code_point_splits_like_tokenizers(pre_tokenizer):
    """Every code point falls in the class (letter, digit, space, other) that the Rust library's
    regex engine puts it in: this is where Unicode versions differ."""
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    step = 1 << 16
    for start in range(0, len(code_points), step):
        chunk = code_points[start:start + step]
        # "a" joins a letter, "1" a digit, " " an other symbol; a space stands alone.
        text = "".join(f"a{chr(c)} {chr(c)}1" for c in chunk)
        ours = pre_tokenize(text)
        theirs = [text[a:b] for _, (a, b) in pre_tokenizer.pre_tokenize_str(text)]
        if ours != theirs:
            for c in chunk:
                t = f"a{chr(c)} {chr(c)}1"
                got = pre_tokenize(t)
                want = [t[a:b] for _, (a, b) in pre_tokenizer.pre_tokenize_str(t)]
                assert got == want, f"U+{c:04X}: {got} != {want}"
            raise AssertionError(f"code points {chunk[0]:X}..{chunk[-1]:X} split differently")


def test_pattern_uses_no_unicode_property_of_the_regex_engine():
    """Why one `regex` release stands for all: the pattern is ASCII and names no class whose
    members come from the engine's Unicode tables (\\p{..}, \\s, \\w, \\d, \\b), only explicit
    ASCII ranges; every other code point reaches it as an ASCII stand-in of its class."""
    assert SPLIT_PATTERN.isascii() and STAND_INS.isascii() and len(STAND_INS) == 0x110000
    assert not re.search(r"\\[pPsSwWdDbB]", SPLIT_PATTERN)


def test_lone_surrogates_are_other_symbols():
    """A str may hold lone surrogates (tokenizers cannot see them): they split as symbols."""
    assert pre_tokenize("a\ud800\udc00 \ud800x") == ["a", "\ud800\udc00", " \ud800", "x"]


def test_classes_are_sorted_disjoint_ranges_with_ascii_first():
    classes = split_classes()
    seen = []
    for name, ranges in classes.items():
        assert all(a <= b for a, b in ranges) and all(b < a2 for (_, b), (a2, _) in zip(ranges, ranges[1:])), name
        seen += [(a, b, name) for a, b in ranges]
    seen.sort()
    assert all(b < a2 for (_, b, _), (a2, _, _) in zip(seen, seen[1:]))  # no code point in two classes
    assert classes["letter"][:2] == [[65, 90], [97, 122]] and classes["digit"][0] == [48, 57]
    assert json.loads((ROOT / "minicodegen" / "data" / "gpt2-split-classes.json").read_text())["tokenizers"]
    assert stand_ins(classes) == STAND_INS
