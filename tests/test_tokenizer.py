"""The tokenizer gives the ids of transformers' CodeGenTokenizer (backed by Rust `tokenizers`).

The reference is built the way transformers builds CodeGen's tokenizer from the vocabulary
files: CodeGenTokenizer(vocab=..., merges=...) plus the 38 added whitespace tokens.
"""
import glob
import json
import os
import re
import sysconfig
import tokenize

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CodeGenTokenizer

from minicodegen.tokenizer import (CODEGEN_TRUNCATE_PATTERNS, Tokenizer, bpe,
                                   bytes_to_unicode, truncate)

DATA = os.path.join(os.path.dirname(__file__), "..", "minicodegen", "data")
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "vocab")
FILES = {"vocab.json": "gpt2-vocab.json", "merges.txt": "gpt2-merges.txt",
         "added_tokens.json": "codegen-added-tokens.json"}


def data_file(name: str) -> str:
    """Path of a package-data file by its hub name, e.g. "vocab.json"."""
    return os.path.join(DATA, FILES[name])


def reference_tokenizer(added: bool = True) -> CodeGenTokenizer:
    with open(data_file("vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(data_file("merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split(" ")) for line in f.read().splitlines()[1:]]
    ref = CodeGenTokenizer(vocab=vocab, merges=merges)
    if added:
        with open(data_file("added_tokens.json"), encoding="utf-8") as f:
            tokens = sorted(json.load(f).items(), key=lambda kv: kv[1])
        ref.add_tokens([t for t, _ in tokens])
        assert [ref.convert_tokens_to_ids(t) for t, _ in tokens] == list(range(50257, 50295))
    return ref


@pytest.fixture(scope="module")
def ref() -> CodeGenTokenizer:
    return reference_tokenizer()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.codegen()


def ref_encode(ref: CodeGenTokenizer, text: str) -> list[int]:
    return ref(text, add_special_tokens=False)["input_ids"]


def ref_decode(ref: CodeGenTokenizer, ids: list[int], **kw) -> str:
    return ref.decode(ids, clean_up_tokenization_spaces=False, **kw)


# -- known ids ------------------------------------------------------------------------------

# The reference ids given in shared/vocab/README.md (CodeGen tokenizer, no prefix space).
README_IDS = {
    "def hello_world():": [4299, 23748, 62, 6894, 33529],
    "Hello world": [15496, 995],
    " Hello world": [18435, 995],
    "def f():\n        return   1\n\t\tx": [4299, 277, 33529, 198, 50280, 7783, 50285, 16, 198,
                                           50294, 87],
}


@pytest.mark.parametrize("text", README_IDS)
def test_reference_ids(tok, ref, text):
    assert tok.encode(text) == README_IDS[text] == ref_encode(ref, text)
    assert tok.decode(README_IDS[text]) == text


def test_attributes(tok):
    assert tok.eos_token_id == 50256
    assert tok.vocab_size == 50295
    assert tok.special_ids == {50256}
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.encode(" " * 32) == [50257, 220]  # 31 spaces, then a lone one
    assert tok.encode("\t" * 9) == [50287]


def test_docstring_examples():
    import doctest

    import minicodegen.tokenizer

    assert doctest.testmod(minicodegen.tokenizer).failed == 0


def test_bytes_to_unicode_and_bpe():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("A")] == "A"
    ranks = {("a", "a"): 0, ("aa", "aa"): 1}
    assert bpe("aaaaa", ranks) == ["aaaa", "a"]  # left to right, no overlapping merges
    assert bpe("", ranks) == [] and bpe("b", ranks) == ["b"]


# -- parity on real code ----------------------------------------------------------------------


def read_source(path: str) -> str:
    """A .py file as Python reads it (its coding cookie), or as UTF-8 with replacements."""
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (SyntaxError, UnicodeDecodeError):
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")


def test_stdlib_parity(tok, ref, capsys):
    """Every .py file of the running Python's standard library gives identical ids."""
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)
                   if "site-packages" not in p)
    assert len(paths) > 1000
    texts = [read_source(p) for p in paths]
    theirs = ref(texts, add_special_tokens=False)["input_ids"]
    mismatches = [p for p, text, ids in zip(paths, texts, theirs) if tok.encode(text) != ids]
    assert not mismatches, f"{len(mismatches)} files differ, e.g. {mismatches[:3]}"
    for text, ids in zip(texts[::25], theirs[::25]):
        assert tok.decode(ids) == text
    with capsys.disabled():
        print(f"\nstdlib parity: {len(paths)} files, {sum(map(len, theirs))} tokens, "
              f"{sum(len(t.encode('utf-8', 'surrogatepass')) for t in texts) / 1e6:.1f} MB, "
              f"all identical")


def test_reference_pre_tokenizer_is_byte_level():
    """test_split_classes.py checks every code point against a plain ByteLevel pre-tokenizer
    (without transformers, so that it runs with any regex release): it is CodeGen's."""
    from test_split_classes import CODEGEN_PRE_TOKENIZER

    state = json.loads(reference_tokenizer().backend_tokenizer.pre_tokenizer.__getstate__())
    assert state == CODEGEN_PRE_TOKENIZER


# -- hypothesis: any text ---------------------------------------------------------------------

PIECES = st.sampled_from([
    " ", "  ", "\t", "\t\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2028",
    "<|endoftext|>", "<|endoftext", "|>", "<|", "'s", "'ll", "'S", "x", "def", "é", "😀",
    "\U0001f469\u200d\U0001f4bb",
    "ǅ", "٣", "1", "²", "#", "'''", '"""', ".", "\u0300", "\u200d", "\ufeff", "\U00011db0",
])
SPACE_RUNS = st.builds(lambda c, n: c * n, st.sampled_from([" ", "\t", "\n", "\r\n", " \t"]),
                       st.integers(1, 80))
CODEY_TEXT = st.lists(st.one_of(PIECES, SPACE_RUNS, st.text(max_size=8)), max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(), st.text(st.characters(codec="utf-8"), max_size=300), CODEY_TEXT)


@settings(max_examples=600, deadline=None)
@given(ANY_TEXT)
def test_any_text_same_ids_and_round_trip(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref_encode(ref, text)
    assert tok.decode(ids) == text == ref_decode(ref, ids)
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 50294), st.sampled_from([50256, 50280, 94, 20543,
                                                                   126, 235, 18433])),
                max_size=30), st.booleans())
def test_any_ids_decode_like_transformers(tok, ref, ids, skip):
    """Arbitrary ids (so bytes that are not valid UTF-8, cut characters) decode the same."""
    assert tok.decode(ids, skip_special_tokens=skip) == ref_decode(ref, ids,
                                                                    skip_special_tokens=skip)


def test_streaming_bytes(tok):
    text = "naïve 😀 — ≠ 中文"
    ids = tok.encode(text)
    pieces = [tok.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    assert any(p.decode("utf-8", errors="replace") != p.decode("utf-8", errors="ignore")
               for p in pieces)  # some token holds part of a character


def test_lone_surrogate_does_not_raise(tok):
    ids = tok.encode("a\ud800b")  # not valid Unicode; transformers cannot even take it
    assert tok.decode(ids) == "a\ufffd\ufffd\ufffdb"


def test_bounded_cache_gives_same_ids(tok):
    small = Tokenizer.codegen()
    small.cache_size = 50
    texts = [f"word{i} other{i * 7} café{i}\n    x" for i in range(200)]
    for text in texts:
        assert small.encode(text) == tok.encode(text)
    assert len(small._cache) <= 50 + len(small.added_tokens)


# -- truncation -------------------------------------------------------------------------------

COMPLETIONS = [
    "    return a + b\n\n\ndef test():\n    pass\n",
    "    x = 1\n# comment\nprint(x)\nprint(y)\n",
    "def f():\n    '''doc'''\n    return 1\ndef g():\n    return 2\nprint(f())\n",
    "    return 1<|endoftext|>garbage\n",
    '    """\n    doc\n"""\nfoo',
    "print(1)\nprint(2)\ndef a(): pass\ndef b(): pass\n# end",
    "  def inner():\n    pass\ndef outer(): pass\ndef third(): pass",
    "#start\nx = 1\n\n\n\ny",
    "'''\nfoo\n'''\n  # indented comment\n    print(1)\nprint(2)",
    "no match here",
    "",
]
PATTERN_SETS = [CODEGEN_TRUNCATE_PATTERNS, [], ["^#"], ["\n\n\n"], [re.escape("<|endoftext|>")],
                ["^'''", '^"""'], ["^#", re.escape("<|endoftext|>"), "^'''", "\n\n\n"],
                [r"^\s*#", "pass"]]


@pytest.mark.parametrize("patterns", PATTERN_SETS)
def test_truncate_like_transformers(tok, ref, patterns):
    for completion in COMPLETIONS:
        assert truncate(completion, patterns) == ref.truncate(completion, patterns)
        ids = tok.encode(completion)
        assert (tok.decode(ids, truncate_before_pattern=patterns)
                == ref_decode(ref, ids, truncate_before_pattern=patterns))


LINES = st.sampled_from(["def f():", "print(x)", "# c", "'''", '"""', "", "    x = 1",
                         "<|endoftext|>", "  print(y)", "  def g():", "printer = 1", "#"])


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, max_size=12).map("\n".join))
def test_truncate_any_lines(ref, completion):
    assert (truncate(completion, CODEGEN_TRUNCATE_PATTERNS)
            == ref.truncate(completion, CODEGEN_TRUNCATE_PATTERNS))


# -- file layouts -----------------------------------------------------------------------------

SAMPLES = ["def f():\n        return   1\n\t\tx<|endoftext|>", "  x", "Hello world", "é😀\r\n"]


def test_package_data_matches_shared_vocab():
    assert os.path.isfile(os.path.join(DATA, "VOCAB.md"))
    if not os.path.isdir(SHARED):
        return  # a checkout without ../shared: nothing to compare with
    for name in FILES.values():
        with open(os.path.join(DATA, name), "rb") as a, open(os.path.join(SHARED, name), "rb") as b:
            assert a.read() == b.read(), name


def hub_dir(path, added: bool = True):
    """Write the 2022 hub layout: vocab.json, merges.txt[, added_tokens.json]."""
    for name in FILES:
        if name != "added_tokens.json" or added:
            with open(data_file(name), "rb") as f, open(path / name, "wb") as g:
                g.write(f.read())
    return path


def test_hub_layout(tok, tmp_path):
    d = hub_dir(tmp_path)
    from_files = Tokenizer.from_files(d / "vocab.json", d / "merges.txt", d / "added_tokens.json")
    from_dir = Tokenizer.from_dir(d)
    from_transformers = CodeGenTokenizer.from_pretrained(str(d))  # reads added_tokens.json too
    for text in SAMPLES:
        want = from_transformers(text, add_special_tokens=False)["input_ids"]
        assert from_files.encode(text) == from_dir.encode(text) == tok.encode(text) == want


def test_nl_layout_is_plain_gpt2(tmp_path):
    """The `nl` checkpoints have no added tokens: indentation is BPE'd like GPT-2."""
    d = hub_dir(tmp_path, added=False)
    plain = Tokenizer.from_dir(d)
    ref = reference_tokenizer(added=False)
    assert plain.vocab_size == 50257 and plain.eos_token_id == 50256
    for text in SAMPLES:
        assert plain.encode(text) == ref_encode(ref, text)
    assert plain.encode("\n        return") == [198, 220, 220, 220, 220, 220, 220, 220, 1441]


def test_tokenizer_json_layout(tok, ref, tmp_path):
    ref.save_pretrained(tmp_path)  # writes tokenizer.json (and tokenizer_config.json)
    assert (tmp_path / "tokenizer.json").is_file()
    path = tmp_path / "tokenizer.json"
    for loaded in (Tokenizer.from_dir(tmp_path), Tokenizer.from_tokenizer_json(path),
                   Tokenizer.from_bytes({"tokenizer.json": path.read_bytes()})):
        assert (loaded.vocab_size, loaded.eos_token_id, loaded.special_ids) == (50295, 50256,
                                                                                {50256})
        for text in SAMPLES:
            assert loaded.encode(text) == tok.encode(text)
        assert loaded.to_bytes() == tok.to_bytes()


def test_to_bytes_round_trip(tok):
    files = tok.to_bytes()
    assert sorted(files) == ["added_tokens.json", "merges.txt", "vocab.json"]
    again = Tokenizer.from_bytes(files)
    assert again.to_bytes() == files
    assert (again.vocab_size, again.eos_token_id, again.special_ids) == (50295, 50256, {50256})
    for text in SAMPLES:
        assert again.encode(text) == tok.encode(text)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [50295, 51199, -1, 10**12])
def test_decode_unknown_id(tok, bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        tok.decode([15496, bad_id])


def test_from_dir_without_tokenizer(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        Tokenizer.from_dir(tmp_path)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_vocab(tmp_path):
    merges = write(tmp_path / "merges.txt", "#version: 0.2\n")
    bad_json = write(tmp_path / "v1.json", '{\n "a": 0,\n "b": 1,,\n}')
    with pytest.raises(ValueError, match=r"v1\.json: line 3"):
        Tokenizer.from_files(bad_json, merges)
    bad_id = write(tmp_path / "v2.json", '{\n "a": 0,\n "b": "one"\n}')
    with pytest.raises(ValueError, match=r"v2\.json: line 3"):
        Tokenizer.from_files(bad_id, merges)
    same_id = write(tmp_path / "v3.json", '{\n "a": 0,\n "b": 0\n}')
    with pytest.raises(ValueError, match=r"v3\.json: line 3.*id 0"):
        Tokenizer.from_files(same_id, merges)
    not_bytes = write(tmp_path / "v4.json", '{"a": 0}')
    with pytest.raises(ValueError, match=r"v4\.json.*256 byte tokens"):
        Tokenizer.from_files(not_bytes, merges)


def test_malformed_merges(tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_bytes(open(data_file("vocab.json"), "rb").read())
    cases = {"#version: 0.2\nĠ t\nĠ a b\n": 3, "Ġ t\n\nĠ a\n": 2,
             "#version: 0.2\nĠ t\nĠ tzzq\n": 3, "#version: 0.2\nĠ  t\n": 2}
    for n, (text, line) in enumerate(cases.items()):
        merges = write(tmp_path / f"m{n}.txt", text)
        with pytest.raises(ValueError, match=rf"m{n}\.txt: line {line}"):
            Tokenizer.from_files(vocab, merges)
    assert Tokenizer.from_files(vocab, write(tmp_path / "ok.txt", "Ġ t\r\nĠ a")).merges == [
        ("Ġ", "t"), ("Ġ", "a")]


def test_malformed_added_tokens(tmp_path):
    d = hub_dir(tmp_path, added=False)
    for n, (text, match) in enumerate({'{\n "  ": 50257\n "   ": 50258\n}': "line 3",
                                       '{\n "  ": 50257,\n "   ": -4\n}': "line 3",
                                       '{\n "  ": 50257,\n "Ġ": 50258\n}': "'Ġ' has id 50258",
                                       '{\n "  ": 50257,\n "   ": 50256\n}': "id 50256"}.items()):
        added = write(tmp_path / f"a{n}.json", text)
        with pytest.raises(ValueError, match=rf"a{n}\.json.*{match}"):
            Tokenizer.from_files(d / "vocab.json", d / "merges.txt", added)


def test_unsupported_tokenizer_json(ref, tmp_path):
    ref.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["add_prefix_space"] = True
    write(tmp_path / "tokenizer.json", json.dumps(spec))
    with pytest.raises(ValueError, match="add_prefix_space"):
        Tokenizer.from_dir(tmp_path)
    write(tmp_path / "tokenizer.json", "{\n  oops")
    with pytest.raises(ValueError, match=r"tokenizer\.json: line 2"):
        Tokenizer.from_dir(tmp_path)


@pytest.fixture(scope="module")
def plain_ref() -> CodeGenTokenizer:
    return reference_tokenizer(added=False)


@settings(max_examples=100, deadline=None)
@given(CODEY_TEXT)
def test_encode_ordinary_is_plain_gpt2(tok, plain_ref, text):
    """encode_ordinary ignores the added whitespace tokens, even right after encode cached them.
    (It reads "<|endoftext|>" as plain text too, where transformers sees the special token.)"""
    text = text.replace("<|endoftext|>", "")
    tok.encode(text)
    assert tok.encode_ordinary(text) == plain_ref.encode(text)
