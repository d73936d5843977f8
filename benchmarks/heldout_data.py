"""Data sets `--model auto` was not tuned on, made from the built-in lists and Tiny Shakespeare by fixed rules, for
checking the plan's rules on other alphabets, sizes and item lengths (benchmarks/auto_targets.py runs them).

    python benchmarks/heldout_data.py OUT_DIR            # writes OUT_DIR/<name>.txt, one item per line

- cyrillic: the built-in surnames (88,799) written in Cyrillic letters (digraphs first: sh -> ш, ch -> ч, ...);
  33 letters, the same words' structure in another alphabet
- accented-2k: 2,000 surnames drawn at random, with accents by fixed rules (a final e -> é, ss -> ß, ...): small data
- emails: 30,000 addresses first.last[digits]@domain from the built-in lists: long items (~25 chars) with
  symbols, digits and structure far apart (the domain after the name)
- lines: the non-empty lines of Tiny Shakespeare as items (line mode, ~36 chars): long items of prose
- pairs-1m: 1,000,000 "first last" pairs drawn by census rank (a Zipf-like law): a million items
- identifiers: 40,000 distinct words of Python's standard library source (identifiers mostly: snake_case,
  CamelCase, digits), drawn at random; not built from names at all. Depends on the Python version that runs this
  (the measurements: 3.11)

Nothing here is committed data: each file is rebuilt from the built-in lists (and ../shared/data for Tiny
Shakespeare) with a fixed seed, so every run of this script writes the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "src" / "makemore" / "datasets"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

CYRILLIC_DIGRAPHS = {"sch": "щ", "sh": "ш", "ch": "ч", "zh": "ж", "kh": "х", "ts": "ц", "ya": "я", "yu": "ю", "yo": "ё"}
CYRILLIC = dict(zip("abcdefghijklmnopqrstuvwxyz", "а б к д е ф г х и й к л м н о п к р с т у в в кс ы з".split()))
DOMAINS = ["mail.com", "post.org", "inbox.net", "web.de", "uni-x.edu", "corp.co.uk"]


def builtin(name: str) -> list[str]:
    with gzip.open(BUILTIN / f"{name}.txt.gz", "rt", encoding="utf-8") as f:
        return [line for line in f.read().split("\n") if line]


def cyrillic(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        for digraph in sorted(CYRILLIC_DIGRAPHS, key=len, reverse=True):
            if word.startswith(digraph, i):
                out.append(CYRILLIC_DIGRAPHS[digraph])
                i += len(digraph)
                break
        else:
            out.append(CYRILLIC[word[i]])
            i += 1
    return "".join(out)


def accented(word: str) -> str:
    word = word.replace("ss", "ß").replace("ae", "æ").replace("oe", "ø").replace("ue", "ü")
    if word.endswith("e"):
        word = word[:-1] + "é"
    if word.startswith("a") and len(word) > 5:
        word = "å" + word[1:]
    return word.replace("nn", "ñ")


def make_sets() -> dict[str, list[str]]:
    rng = random.Random(1234)
    surnames, first = builtin("surnames"), builtin("first-names")
    sets = {"cyrillic": [cyrillic(s) for s in surnames]}
    sets["accented-2k"] = [accented(s) for s in rng.sample(surnames, 2000)]
    emails = []
    for _ in range(30_000):
        digits = str(rng.randrange(100)) if rng.random() < 0.4 else ""
        sep = rng.choice([".", "_", ""])
        emails.append(f"{rng.choice(first[:2000])}{sep}{rng.choice(surnames[:20000])}{digits}@{rng.choice(DOMAINS)}")
    sets["emails"] = emails
    if SHAKESPEARE.is_file():
        sets["lines"] = [line.strip() for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    first_weights = [1.0 / (r + 10) for r in range(len(first))]
    last_weights = [1.0 / (r + 10) for r in range(len(surnames))]
    picks = zip(rng.choices(first, first_weights, k=1_000_000), rng.choices(surnames, last_weights, k=1_000_000))
    sets["pairs-1m"] = [f"{a} {b}" for a, b in picks]
    sets["identifiers"] = identifiers(40_000)
    return sets


def identifiers(count: int) -> list[str]:
    """`count` distinct words (identifier characters, 3 to 40 long) of the standard library's .py files, drawn with
    a fixed seed from their sorted list."""
    words: set[str] = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        words.update(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]{2,39}\b", text))
    return random.Random(5678).sample(sorted(words), min(count, len(words)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, items in make_sets().items():
        (args.out / f"{name}.txt").write_text("\n".join(items) + "\n", encoding="utf-8")
        chars = sum(map(len, items))
        print(f"{name}: {len(items):,} items, mean length {chars / len(items):.1f}, {len(set(''.join(items)))} symbols")


if __name__ == "__main__":
    main()
