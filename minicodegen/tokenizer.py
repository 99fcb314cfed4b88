"""CodeGen's tokenizer: byte-level BPE (GPT-2) plus added whitespace tokens, from scratch.

It gives exactly the ids of Hugging Face's `CodeGenTokenizer` (the one backed by the Rust
`tokenizers` library) on any text. The pipeline of `Tokenizer.encode`, on a worked example:

    text            "def f():\\n        return"
    1. added tokens  "def f():\\n" | "        " (8 spaces, id 50280) | "return"
       are cut out of the raw text first, leftmost-longest, nothing stripped around them.
       `<|endoftext|>` (50256) is a special token and is cut out the same way.
    2. pre-tokenize  each remaining piece is split by the GPT-2 regex into "words":
                     "def" " f" "():" "\\n" | "return"
    3. bytes->chars  each word's UTF-8 bytes are spelled in a 256-char alphabet in which every
                     char is printable: " f" -> "Ġf" (the space byte 0x20 is spelled "Ġ").
    4. BPE           the chars of a word are merged pair by pair, the pair that comes first in
                     merges.txt first, until no listed pair is left: "Ġf" -> ["Ġf"].
    5. ids           each resulting token is looked up in vocab.json.
                     -> [4299, 277, 33529, 198, 50280, 7783]

`decode` goes back: id -> token -> bytes (the inverse alphabet) -> UTF-8 text.

Without step 1 (plain GPT-2, what the `nl` checkpoints use) the 8 spaces would have been
BPE'd with the newline and the word: "\\n       " and " return". CodeGen's mono/multi
checkpoints add 38 tokens for runs of 2..31 spaces and 2..9 tabs, so indentation costs one token.

Two details that exactness needs and that are easy to get wrong:
- The legacy (pure Python) transformers tokenizer deletes the newline before an added indent
  token (transformers issue #21161); the Rust one does not, and neither do we.
- The Rust library's regex engine (Oniguruma) and the `regex` package carry Unicode tables of
  their own, which differ (and move with releases). The pattern's letter, digit and space
  classes are therefore explicit code-point ranges read from `tokenizers` (`split_classes`,
  `stand_ins`), not the engine's \\p{L} / \\p{N} / \\s, so the ids do not depend on the
  `regex` release.
"""
from __future__ import annotations

import json
import operator
import os
import re
from importlib import resources
from itertools import chain
from typing import Iterable

import regex

# ---------------------------------------------------------------------------------------------
# 1. The byte <-> char alphabet


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> char table: every byte 0..255 gets a printable, non-space char.

    Printable Latin-1 bytes ("!".."~", "¡".."¬", "®".."ÿ": 188 of them) stand for themselves;
    the other 68 bytes (controls, space, DEL, 0x80..0xA0, soft hyphen) are given the chars
    U+0100, U+0101, ... in byte order. So BPE can work on str without ever seeing whitespace
    or control chars, and a token like "Ġreturn" is readable in vocab.json.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")], table[0xE9]
    ('a', 'Ġ', 'Ċ', 'é')
    >>> len(set(table.values()))
    256
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


BYTE_TO_CHAR = bytes_to_unicode()  # {0x20: "Ġ", ...}, 256 entries
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}  # {"Ġ": 0x20, ...}


def to_alphabet(word: str) -> str:
    """Spell the UTF-8 bytes of `word` in the byte-level alphabet (one char per byte).

    Lone surrogates (not valid Unicode, but a Python str may hold them) are kept as the bytes
    "surrogatepass" gives, so encoding never raises; they decode to U+FFFD.

    >>> to_alphabet(" café\\n")
    'ĠcafÃ©Ċ'
    """
    # UTF-8 bytes -> latin-1 str (char i is byte i) -> alphabet chars (str.translate takes
    # the {ord: char} table as is): all loops in C.
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(BYTE_TO_CHAR)


# ---------------------------------------------------------------------------------------------
# 2. The pre-tokenizer regex

# GPT-2's pattern, as in the `tokenizers` ByteLevel pre-tokenizer. Alternatives, in order:
# English contractions; an optional space + letters; an optional space + digits; an optional
# space + other symbols; whitespace not followed by a non-space (so "   x" gives "  " and " x");
# any other whitespace (at the end of the text).
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def split_classes() -> dict[str, list[list[int]]]:
    """The code points that the reference tokenizer counts as letters, digits and white space.

    The three Unicode classes of the pattern (\\p{L}, \\p{N}, \\s) depend on the Unicode tables of
    the regex engine, and Hugging Face's (Oniguruma, inside `tokenizers`) and the `regex`
    package's move at different times: a `regex` release with a newer Unicode makes letters of
    code points that `tokenizers` still treats as symbols, and text holding them splits
    differently. So the classes ship as explicit inclusive ranges, read from `tokenizers` code
    point by code point by `tools/make_split_classes.py`, and the engine's tables are never
    asked: any `regex` release gives the same words.

    >>> classes = split_classes()
    >>> classes["digit"][0], classes["space"][:3]
    ([48, 57], [[9, 13], [32, 32], [133, 133]])
    """
    path = resources.files("minicodegen") / "data" / "gpt2-split-classes.json"
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
            if k in ("letter", "digit", "space")}


def stand_ins(classes: dict[str, list[list[int]]]) -> str:
    """A str of 0x110000 ASCII chars, one per code point: what the splitter sees in its place.

    ASCII stands for itself; any other letter becomes "a", digit "0", white space "\\t" and
    anything else "!". Each stand-in is in its code point's class and plays no other part in
    the pattern ("a" starts no contraction, "\\t" is not the literal space of " ?"), so the
    stand-in text splits at the same offsets as the text, with a pattern of ASCII classes only.
    (Large classes of explicit ranges make `regex` 8x slower; property classes would bring
    back the engine's Unicode tables.)

    >>> table = stand_ins(split_classes())
    >>> "x = é² + ٣ 😀\\u3000".translate(table)
    'x = a0 + 0 !\\t'
    """
    table = bytearray(b"!" * 0x110000)
    table[:128] = bytes(range(128))
    for name, char in (("letter", b"a"), ("digit", b"0"), ("space", b"\t")):
        for first, last in classes[name]:
            first = max(first, 128)
            if first <= last:
                table[first:last + 1] = char * (last - first + 1)
    return table.decode("ascii")


def _ascii_class(ranges: list[list[int]]) -> str:
    """The ASCII part of a class, for inside [...]: [[48, 57], [178, 178]] -> "\\x30-\\x39"."""
    return "".join(rf"\x{a:02x}-\x{min(b, 127):02x}" for a, b in ranges if a < 128)


_CLASSES = split_classes()
STAND_INS = stand_ins(_CLASSES)
_L, _N, _S = (_ascii_class(_CLASSES[k]) for k in ("letter", "digit", "space"))
# GPT2_SPLIT_PATTERN over ASCII (the text's stand-ins): \p{L} -> [_L], \p{N} -> [_N], \s -> [_S],
# and (?!\S), "not followed by a non-space", -> (?![^_S]).
SPLIT_PATTERN = (rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{_L}]+| ?[{_N}]+| ?[^{_S}{_L}{_N}]+"""
                 rf"""|[{_S}]+(?![^{_S}])|[{_S}]+""")
SPLIT_RE = regex.compile(SPLIT_PATTERN)


def pre_tokenize(text: str) -> list[str]:
    """Split text (with no added tokens in it) into the words that BPE sees one at a time.

    >>> pre_tokenize("def f(x):\\n    return x's   1")
    ['def', ' f', '(', 'x', '):', '\\n   ', ' return', ' x', "'s", '  ', ' 1']
    >>> pre_tokenize("naïve²=١")
    ['naïve', '²', '=', '١']
    """
    if text.isascii():
        return SPLIT_RE.findall(text)
    return [text[m.start():m.end()] for m in SPLIT_RE.finditer(text.translate(STAND_INS))]


# ---------------------------------------------------------------------------------------------
# 3. BPE


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the chars of `word` by rank: lowest-rank adjacent pair first, until none is left.

    `word` is spelled in the byte-level alphabet; `ranks` maps a pair of tokens to its line in
    merges.txt (0 = first). Each step finds the best pair and merges every occurrence of it,
    left to right (the same result as the Rust library's priority queue).

    >>> ranks = {("l", "l"): 0, ("h", "e"): 1, ("he", "ll"): 2, ("o", "!"): 3}
    >>> bpe("hello!", ranks)  # h e l l o ! -> h e ll o ! -> he ll o ! -> hell o ! -> hell o!
    ['hell', 'o!']

    With GPT-2's 50,000 merges: "Ġhello" -> Ġ he l l o -> Ġ he ll o -> Ġhe ll o -> Ġhell o
    -> ["Ġhello"], and "hello_world" -> ["hello", "_", "world"].
    """
    parts = list(word)
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, _NO_RANK))
        if best not in ranks:
            break
        first, second = best
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


_NO_RANK = float("inf")

# ---------------------------------------------------------------------------------------------
# 4. Truncating completions (transformers' CodeGenTokenizer.truncate)

CODEGEN_TRUNCATE_PATTERNS = [r"^#", re.escape("<|endoftext|>"), r"^'''", r'^"""', "\n\n\n"]


def truncate(completion: str, patterns: list[str]) -> str:
    """Cut a sampled completion where the model starts something new, like transformers does.

    First cut before a second top-level `print` and then before a second top-level `def`;
    then cut at the earliest match of any pattern (Python `re`, MULTILINE: `^` is a line start).

    >>> code = "    return x\\n\\n# test\\nprint(f(1))\\n"
    >>> truncate(code, CODEGEN_TRUNCATE_PATTERNS)
    '    return x\\n\\n'
    >>> truncate("def f():\\n    pass\\ndef g():\\n    pass\\n", [])
    'def f():\\n    pass\\n'
    """
    for keyword in ("^print", "^def"):
        starts = [m.start() for m in re.finditer(keyword, completion, re.MULTILINE)]
        if len(starts) > 1:
            completion = completion[:starts[1]]
    cuts = [m.start() for p in patterns if (m := re.compile(p, re.MULTILINE).search(completion))]
    return completion[:min(cuts)] if cuts else completion


# ---------------------------------------------------------------------------------------------
# 5. Reading the files (both layouts) with errors that name the file and the line


def _line_of(text: str, pos: int) -> int:
    """1-based line number of character offset `pos` in `text`."""
    return text.count("\n", 0, max(pos, 0)) + 1


def _decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{name}: line {line}: not valid UTF-8") from None


def _load_json(text: str, name: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: line {e.lineno}: invalid JSON ({e.msg})") from None


def _read_token_ids(text: str, name: str, vocab: dict[str, int] | None = None) -> dict[str, int]:
    """Parse vocab.json / added_tokens.json: a JSON object {token: id} with distinct ids >= 0.

    For added_tokens.json pass the `vocab`: a token in it must keep its id, and a new token must
    not take the id of another one.
    """
    try:  # a JSON object becomes a tuple of (key, value) pairs, to see duplicate keys
        pairs = json.loads(text, object_pairs_hook=tuple)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: line {e.lineno}: invalid JSON ({e.msg})") from None

    def where(token: str, last: bool = False) -> str:  # "line N", found by searching the key
        for key in (json.dumps(token, ensure_ascii=False), json.dumps(token)):
            pos = text.rfind(key) if last else text.find(key)
            if pos >= 0:
                return f"line {_line_of(text, pos)}"
        return f"entry {token!r}"

    if not isinstance(pairs, tuple):
        raise ValueError(f"{name}: line 1: expected a JSON object {{token: id}}")
    table: dict[str, int] = {}
    owner = {i: t for t, i in (vocab or {}).items()}  # id -> token, of the ids already taken
    for token, i in pairs:
        if type(i) is not int or i < 0:
            raise ValueError(f"{name}: {where(token)}: id of {token!r} is {i!r}, not an int >= 0")
        if token in table:
            raise ValueError(f"{name}: {where(token, last=True)}: {token!r} appears twice")
        if vocab and token in vocab and vocab[token] != i:
            raise ValueError(f"{name}: {where(token)}: {token!r} has id {i} but id "
                             f"{vocab[token]} in the vocab")
        if owner.setdefault(i, token) != token:
            raise ValueError(f"{name}: {where(token)}: id {i} is given to both "
                             f"{owner[i]!r} and {token!r}")
        table[token] = i
    return table


def _read_merges(text: str, name: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Parse merges.txt: an optional "#version" first line, then one "a b" pair a line, where
    a, b and a+b are all in the vocab."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    merges = []
    for n, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if n == 1 and line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not pair[0] or not pair[1]:
            raise ValueError(f"{name}: line {n}: expected two tokens separated by one space, "
                             f"got {line!r}")
        for token in (pair[0], pair[1], pair[0] + pair[1]):
            if token not in vocab:
                raise ValueError(f"{name}: line {n}: {token!r} is not in the vocab")
        merges.append((pair[0], pair[1]))
    return merges


# ---------------------------------------------------------------------------------------------
# 6. The tokenizer


class Tokenizer:
    """Byte-level BPE with added tokens; same ids as transformers' (fast) CodeGenTokenizer.

    >>> tok = Tokenizer.codegen()
    >>> ids = tok.encode("def f():\\n        return 1<|endoftext|>")
    >>> ids
    [4299, 277, 33529, 198, 50280, 7783, 352, 50256]
    >>> tok.decode(ids, skip_special_tokens=True)
    'def f():\\n        return 1'
    >>> tok.eos_token_id, tok.vocab_size
    (50256, 50295)
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
                 added_tokens: dict[str, int] | None = None,
                 special_tokens: list[str] | None = None, *, name: str = "vocabulary"):
        """Build from a parsed vocabulary.

        vocab: token (in the byte-level alphabet) -> id, e.g. {"Ġreturn": 1441, ...}.
        merges: pairs in priority order, e.g. [("Ġ", "t"), ("Ġ", "a"), ...].
        added_tokens: raw text -> id, cut out of the text before BPE, e.g. {"    ": 50284}.
        special_tokens: tokens (in vocab or added_tokens) that `skip_special_tokens` drops; they
            are also cut out of the text before the other added tokens. By default the one
            "<|endoftext|>" if the vocab has it.
        name: what error messages call the source (a file name).
        """
        added_tokens = dict(added_tokens or {})
        if special_tokens is None:
            special_tokens = ["<|endoftext|>"] if "<|endoftext|>" in vocab else []
        for token in special_tokens:
            if token not in vocab and token not in added_tokens:
                raise ValueError(f"{name}: special token {token!r} has no id")
            added_tokens.setdefault(token, vocab.get(token))
        for token, i in added_tokens.items():
            if not token:
                raise ValueError(f"{name}: an added token is the empty string")
            if token in vocab and vocab[token] != i:
                raise ValueError(f"{name}: added token {token!r} has id {i} but the vocab says "
                                 f"{vocab[token]}")
        missing = [c for c in BYTE_TO_CHAR.values() if c not in vocab]
        if missing:
            raise ValueError(f"{name}: the vocab lacks {len(missing)} of the 256 byte tokens, "
                             f"e.g. {missing[0]!r}: not a byte-level BPE vocabulary")
        ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            for token in (a, b, a + b):
                if token not in vocab:
                    raise ValueError(f"{name}: merge #{rank + 1} {a!r} {b!r}: {token!r} is not "
                                     f"in the vocab")
            ranks[(a, b)] = rank

        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.ranks = ranks
        self.added_tokens = added_tokens  # includes the special tokens
        self.special_tokens = list(special_tokens)
        self.special_ids = {added_tokens[t] for t in special_tokens}
        self.eos_token_id = added_tokens.get("<|endoftext|>", vocab.get("<|endoftext|>"))

        # id -> token -> bytes; None for ids that nothing uses.
        id_to_token: dict[int, str] = {}
        for token, i in [*vocab.items(), *added_tokens.items()]:
            if id_to_token.setdefault(i, token) != token:
                raise ValueError(f"{name}: id {i} is given to both {id_to_token[i]!r} and "
                                 f"{token!r}")
        self.vocab_size = max(id_to_token) + 1
        self.id_to_bytes: list[bytes | None] = [None] * self.vocab_size
        for i, token in id_to_token.items():
            self.id_to_bytes[i] = self._token_bytes(token)

        # Added tokens are cut out in two rounds, like the Rust library: special (never
        # normalized) ones first, then the others. Within a round: leftmost match, and the
        # longest one there (an alternation tries the longer tokens first). One capturing group,
        # so re.split returns [text, token, text, token, ..., text].
        def alternation(tokens: list[str]) -> re.Pattern | None:
            tokens = sorted(tokens, key=len, reverse=True)
            return re.compile("(" + "|".join(map(re.escape, tokens)) + ")") if tokens else None

        self._special_re = alternation(self.special_tokens)
        self._added_re = alternation([t for t in added_tokens if t not in self.special_tokens])
        self._added_ids = {token: [i] for token, i in added_tokens.items()}
        self._cache: dict[str, list[int]] = dict(self._added_ids)  # word (raw text) -> ids
        self.cache_size = 200_000

    @staticmethod
    def _token_bytes(token: str) -> bytes:
        # Like the Rust ByteLevel decoder: a token all of whose chars are in the alphabet is
        # read as bytes; any other (an added token such as "    ") stands for its UTF-8 text.
        try:
            return bytes(CHAR_TO_BYTE[c] for c in token)
        except KeyError:
            return token.encode("utf-8")

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, files: dict[str, bytes]) -> Tokenizer:
        """Rebuild from file contents: {"vocab.json", "merges.txt"[, "added_tokens.json"]}
        (the 2022 hub layout, as `to_bytes` returns) or {"tokenizer.json"}.

        >>> tok = Tokenizer.codegen()
        >>> Tokenizer.from_bytes(tok.to_bytes()).encode("  x") == tok.encode("  x") == [50286, 87]
        True
        """
        if "tokenizer.json" in files:
            return cls._from_tokenizer_json(files["tokenizer.json"], "tokenizer.json")
        for key in ("vocab.json", "merges.txt"):
            if key not in files:
                raise ValueError(f"from_bytes: no {key!r} among {sorted(files)}")
        return cls._from_hub_layout(files["vocab.json"], files["merges.txt"],
                                    files.get("added_tokens.json"),
                                    ("vocab.json", "merges.txt", "added_tokens.json"))

    @classmethod
    def _from_hub_layout(cls, vocab_json: bytes, merges_txt: bytes,
                         added_tokens_json: bytes | None, names: tuple[str, str, str]) -> Tokenizer:
        vocab_name, merges_name, added_name = names
        vocab = _read_token_ids(_decode_utf8(vocab_json, vocab_name), vocab_name)
        merges = _read_merges(_decode_utf8(merges_txt, merges_name), merges_name, vocab)
        if added_tokens_json is None:
            return cls(vocab, merges, name=vocab_name)
        added = _read_token_ids(_decode_utf8(added_tokens_json, added_name), added_name, vocab)
        return cls(vocab, merges, added, name=f"{vocab_name} + {added_name}")

    def to_bytes(self) -> dict[str, bytes]:
        """The tokenizer as the three hub files {"vocab.json", "merges.txt", "added_tokens.json"}.

        `Tokenizer.from_bytes` rebuilds it; a checkpoint converter can store these in an .npz.
        Only "<|endoftext|>" can be special in this layout: other special tokens raise.
        """
        if set(self.special_tokens) != ({"<|endoftext|>"} & self.vocab.keys()):
            raise ValueError(f"special tokens {self.special_tokens} cannot be stored in the "
                             f"vocab.json/merges.txt/added_tokens.json layout")
        added = {t: i for t, i in self.added_tokens.items() if t not in self.vocab}
        merges = "".join(f"{a} {b}\n" for a, b in self.merges)
        return {
            "vocab.json": json.dumps(self.vocab, ensure_ascii=False).encode("utf-8"),
            "merges.txt": ("#version: 0.2\n" + merges).encode("utf-8"),
            "added_tokens.json": json.dumps(added, ensure_ascii=False).encode("utf-8"),
        }

    @classmethod
    def from_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike,
                   added_tokens_json: str | os.PathLike | None = None) -> Tokenizer:
        """Load the 2022 hub layout: vocab.json, merges.txt and optionally added_tokens.json.

        Errors in a file raise ValueError naming the file and the line.
        """
        def read(path: str | os.PathLike) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        added = None if added_tokens_json is None else read(added_tokens_json)
        return cls._from_hub_layout(read(vocab_json), read(merges_txt), added,
                                    (str(vocab_json), str(merges_txt), str(added_tokens_json)))

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a `tokenizer.json` as written by `tokenizers` / transformers' save_pretrained."""
        with open(path, "rb") as f:
            return cls._from_tokenizer_json(f.read(), str(path))

    @classmethod
    def _from_tokenizer_json(cls, data: bytes, name: str) -> Tokenizer:
        spec = _load_json(_decode_utf8(data, name), name)
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise ValueError(f"{name}: no \"model\" object")
        model = spec["model"]
        supported = {  # setting: the values this implementation does (exactly)
            "model.type": (model.get("type"), ["BPE"]),
            "model.dropout": (model.get("dropout"), [None]),
            "model.ignore_merges": (model.get("ignore_merges", False), [False]),
            "model.byte_fallback": (model.get("byte_fallback", False), [False]),
            "model.continuing_subword_prefix": (model.get("continuing_subword_prefix"), [None, ""]),
            "model.end_of_word_suffix": (model.get("end_of_word_suffix"), [None, ""]),
            "normalizer": (spec.get("normalizer"), [None]),
            "pre_tokenizer.type": ((spec.get("pre_tokenizer") or {}).get("type"), ["ByteLevel"]),
            "pre_tokenizer.add_prefix_space":
                ((spec.get("pre_tokenizer") or {}).get("add_prefix_space"), [False]),
            "pre_tokenizer.use_regex": ((spec.get("pre_tokenizer") or {}).get("use_regex", True),
                                        [True]),
        }
        for setting, (value, allowed) in supported.items():
            if value not in allowed:
                raise ValueError(f"{name}: {setting} = {value!r} is not supported "
                                 f"(only {allowed})")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
            raise ValueError(f"{name}: model.vocab is not a {{token: id}} object")
        merges = []
        for n, m in enumerate(model.get("merges") or []):
            pair = m.split(" ") if isinstance(m, str) else m  # "a b" (old) or ["a", "b"]
            if not (isinstance(pair, list) and len(pair) == 2 and all(pair)):
                raise ValueError(f"{name}: model.merges[{n}] is {m!r}, not a pair of tokens")
            merges.append((pair[0], pair[1]))
        added, special = {}, []
        for n, t in enumerate(spec.get("added_tokens") or []):
            if not (isinstance(t, dict) and isinstance(t.get("content"), str)
                    and type(t.get("id")) is int):
                raise ValueError(f"{name}: added_tokens[{n}] needs a \"content\" and an \"id\"")
            if any(t.get(k) for k in ("lstrip", "rstrip", "single_word")):
                raise ValueError(f"{name}: added_tokens[{n}] ({t.get('content')!r}) uses "
                                 f"lstrip/rstrip/single_word, which is not supported")
            added[t["content"]] = t["id"]
            if t.get("special"):
                special.append(t["content"])
        return cls(vocab, merges, added, special, name=name)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a checkpoint directory: tokenizer.json if there is one, else vocab.json +
        merges.txt (+ added_tokens.json if present)."""
        join = lambda f: os.path.join(path, f)  # noqa: E731
        if os.path.isfile(join("tokenizer.json")):
            return cls.from_tokenizer_json(join("tokenizer.json"))
        if os.path.isfile(join("vocab.json")) and os.path.isfile(join("merges.txt")):
            added = join("added_tokens.json")
            return cls.from_files(join("vocab.json"), join("merges.txt"),
                                  added if os.path.isfile(added) else None)
        raise ValueError(f"{path}: no tokenizer found (expected tokenizer.json, or vocab.json "
                         f"and merges.txt)")

    @classmethod
    def codegen(cls) -> Tokenizer:
        """CodeGen's tokenizer (mono/multi checkpoints) from the package data, offline."""
        data = resources.files("minicodegen") / "data"
        return cls.from_bytes({
            "vocab.json": (data / "gpt2-vocab.json").read_bytes(),
            "merges.txt": (data / "gpt2-merges.txt").read_bytes(),
            "added_tokens.json": (data / "codegen-added-tokens.json").read_bytes(),
        })

    # -- encoding --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Text -> token ids. Never raises on a str.

        >>> Tokenizer.codegen().encode("def hello_world():")
        [4299, 23748, 62, 6894, 33529]
        """
        return self._ids(self.split(text))

    def split(self, text: str) -> list[str]:
        """Cut text into added tokens and pre-tokenized words: the units that get ids.

        >>> Tokenizer.codegen().split("if x:\\n        return  y<|endoftext|>")
        ['if', ' x', ':', '\\n', '        ', 'return', '  ', 'y', '<|endoftext|>']
        """
        words: list[str] = []
        # re.split with one group alternates: even index = ordinary text, odd = added token.
        chunks = self._special_re.split(text) if self._special_re else [text]
        for i, chunk in enumerate(chunks):
            if i % 2:
                words.append(chunk)
                continue
            pieces = self._added_re.split(chunk) if self._added_re else [chunk]
            for j, piece in enumerate(pieces):
                if j % 2:
                    words.append(piece)
                else:
                    words += pre_tokenize(piece)
        return words

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of text as if there were no added tokens (plain GPT-2 BPE).

        >>> Tokenizer.codegen().encode_ordinary("  x")  # no indent token: "Ġ" "Ġx"
        [220, 2124]
        """
        # Not through the word cache: it maps the added tokens' text ("  ") to their ids.
        return [self.vocab[t] for word in pre_tokenize(text) for t in bpe(to_alphabet(word), self.ranks)]

    def _ids(self, words: list[str]) -> list[int]:
        # The cache maps a word (raw text) to its ids and starts with every added token, so
        # one lookup serves both: an ordinary word never equals an added token, since every
        # occurrence of one was cut out before pre-tokenization. New words go through BPE
        # once; then the ids are gathered without a Python-level loop over the words.
        cache = self._cache
        new = set(words).difference(cache)
        if len(cache) + len(new) > self.cache_size:  # bounded memory on endless new text
            cache.clear()
            cache.update(self._added_ids)
            new = set(words).difference(cache)
        vocab, ranks = self.vocab, self.ranks
        for word in new:
            cache[word] = [vocab[token] for token in bpe(to_alphabet(word), ranks)]
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    # -- decoding --------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (for streaming: a char may span two tokens).

        >>> tok = Tokenizer.codegen()
        >>> tok.encode("é")
        [2634]
        >>> tok.decode_bytes([2634]), tok.decode_bytes(tok.encode("😀")[:1])
        (b'\\xc3\\xa9', b'\\xf0\\x9f\\x98')
        """
        table, parts = self.id_to_bytes, []
        for i in ids:
            i = operator.index(i)  # ints and numpy ints; floats raise TypeError
            piece = table[i] if 0 <= i < len(table) else None
            if piece is None:
                raise ValueError(f"token id {i} is not in the vocabulary (ids 0..{len(table) - 1})")
            parts.append(piece)
        return b"".join(parts)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
               truncate_before_pattern: list[str] | None = None) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 become U+FFFD, as with
        bytes.decode(errors="replace"). No "clean up of tokenization spaces" (it damages code).

        >>> tok = Tokenizer.codegen()
        >>> tok.decode([4299, 277, 33529, 198, 50280, 7783, 50256])
        'def f():\\n        return<|endoftext|>'
        >>> tok.decode([4299, 277, 33529, 198, 50280, 7783, 50256], skip_special_tokens=True)
        'def f():\\n        return'
        >>> tok.decode(tok.encode("x = 1\\n\\n\\n# test"), truncate_before_pattern=["^#"])
        'x = 1\\n\\n\\n'
        """
        if skip_special_tokens:
            ids = [i for i in ids if operator.index(i) not in self.special_ids]
        text = self.decode_bytes(ids).decode("utf-8", errors="replace")
        if truncate_before_pattern:
            text = truncate(text, truncate_before_pattern)
        return text

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab={len(self.vocab)}, merges={len(self.merges)}, "
                f"added={len(self.added_tokens)}, vocab_size={self.vocab_size})")
