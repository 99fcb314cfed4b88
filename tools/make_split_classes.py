"""Write minicodegen/data/gpt2-split-classes.json: which code points the reference tokenizer's
pre-tokenizer treats as letters, digits and white space.

    python tools/make_split_classes.py            # rewrite the file from the installed tokenizers
    python tools/make_split_classes.py --check    # exit 1 if the file differs from tokenizers

The GPT-2 split pattern names three Unicode classes: \\p{L}, \\p{N} and \\s. What each one holds
depends on the Unicode tables of the regex engine: Hugging Face `tokenizers` uses Oniguruma,
the `regex` package carries its own tables, and the two move at different times (a `regex`
release that knows a newer Unicode turns unassigned code points into letters, and text that
contains them splits differently). So minicodegen does not use the engine's tables at all. It
ships the three classes as explicit code-point ranges, read here from `tokenizers` itself, one
code point at a time, through the ByteLevel pre-tokenizer that `CodeGenTokenizer` uses:

    letter  "a" + c   is one word        (' ?\\p{L}+' took both)
    digit   "1" + c   is one word        (' ?\\p{N}+')
    other   "!" + c   is one word        (' ?[^\\s\\p{L}\\p{N}]+')
    space   none of the three, and "x" + c + c + "x" splits as "x", c, c + "x" or "x", c, c, "x"

Every code point must fall in exactly one class; the tool stops otherwise. Surrogates
(U+D800..U+DFFF) cannot reach a Rust string and are left out: minicodegen treats a lone
surrogate as "other", which no class lists.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizers import pre_tokenizers

OUT = Path(__file__).resolve().parents[1] / "minicodegen" / "data" / "gpt2-split-classes.json"


def one_word(split, text: str) -> bool:
    return len(split(text)) == 1


def classify(split, c: str) -> str:
    """The class of code point `c` as the pre-tokenizer sees it: letter, digit, space or other."""
    found = [name for name, lead in (("letter", "a"), ("digit", "1"), ("other", "!")) if one_word(split, lead + c)]
    if not found:
        # white space: "x" then the run c c (the first c split off by \s+(?!\S)), then "x"
        words = split("x" + c + c + "x")
        if words != ["x", c, c + "x"] and words != ["x", c, c, "x"]:
            raise SystemExit(f"U+{ord(c):04X} is in no class: {words}")
        found = ["space"]
    if len(found) > 1:
        raise SystemExit(f"U+{ord(c):04X} is in more than one class: {found}")
    return found[0]


def ranges(code_points: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7] -> [[1, 3], [7, 7]] (inclusive ranges of sorted code points)."""
    out: list[list[int]] = []
    for c in code_points:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def read_classes() -> dict:
    import tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    def split(text: str) -> list[str]:  # the words, by their offsets into `text`
        return [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]

    members: dict[str, list[int]] = {"letter": [], "digit": [], "space": []}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        kind = classify(split, chr(cp))
        if kind != "other":
            members[kind].append(cp)
    return {
        "about": "Code points that Hugging Face tokenizers' ByteLevel pre-tokenizer (the GPT-2 split "
                 "pattern) treats as letters (\\p{L}), digits (\\p{N}) and white space (\\s); every "
                 "other code point is 'other'. Inclusive ranges [first, last]. Written by "
                 "tools/make_split_classes.py.",
        "tokenizers": tokenizers.__version__,
        **{k: ranges(v) for k, v in members.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = ap.parse_args()
    classes = read_classes()
    counts = {k: sum(b - a + 1 for a, b in classes[k]) for k in ("letter", "digit", "space")}
    summary = ", ".join(f"{k} {n} code points in {len(classes[k])} ranges" for k, n in counts.items())
    if args.check:
        shipped = json.loads(OUT.read_text())
        same = all(shipped[k] == classes[k] for k in ("letter", "digit", "space"))
        print(f"tokenizers {classes['tokenizers']}: {summary}; {OUT.name} {'agrees' if same else 'DIFFERS'}"
              f" (written with tokenizers {shipped['tokenizers']})")
        return 0 if same else 1
    text = json.dumps({k: v for k, v in classes.items() if k not in ("letter", "digit", "space")}, indent=1)[:-2]
    text += "".join(f',\n "{k}": {json.dumps(classes[k], separators=(",", ":"))}' for k in ("letter", "digit", "space"))
    OUT.write_text(text + "\n}\n")
    print(f"wrote {OUT} (tokenizers {classes['tokenizers']}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
