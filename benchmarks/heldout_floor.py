"""The floor under any model's NLL on two of benchmarks/heldout_data.py's sets: the exact probability of each val
item under the rule that generated it (uniform and Zipf draws from the built-in lists), in nats per token (a
character, or the end of an item). No model can beat it on average; the gap between it and the Kneser-Ney n-gram is
all a network can gain there.

    python benchmarks/heldout_floor.py RUN_DIR emails       # RUN_DIR: a run of heldout emails.txt (its val.txt)
    python benchmarks/heldout_floor.py RUN_DIR pairs-1m
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from heldout_data import DOMAINS, builtin


def distribution(words: list[str], weights: list[float]) -> dict[str, float]:
    probs: dict[str, float] = defaultdict(float)
    total = sum(weights)
    for word, weight in zip(words, weights):
        probs[word] += weight / total
    return probs


def email_probability(item: str, first: dict[str, float], last: dict[str, float]) -> float:
    """Sum over every way the rule could have written `item`: first + separator + surname + digits @ domain."""
    local, _, domain = item.rpartition("@")
    if domain not in DOMAINS:
        return 0.0
    total = 0.0
    stem = local.rstrip("0123456789")
    digits = local[len(stem) :]
    splits = [(stem, "")] + [(stem + digits[:i], digits[i:]) for i in range(len(digits))]
    for body, tail in splits:
        if tail == "":
            p_digits = 0.6
        elif tail == str(int(tail)) and int(tail) < 100:
            p_digits = 0.4 / 100
        else:
            continue
        for cut in range(1, len(body)):
            head, rest = body[:cut], body[cut:]
            if head not in first:
                continue
            for sep in (".", "_", ""):
                if rest.startswith(sep) and rest[len(sep) :] in last:
                    total += first[head] / 3 * last[rest[len(sep) :]] * p_digits
    return total / len(DOMAINS)


def pair_probability(item: str, first: dict[str, float], last: dict[str, float]) -> float:
    return sum(first.get(item[:i], 0.0) * last.get(item[i + 1 :], 0.0) for i, char in enumerate(item) if char == " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("set", choices=["emails", "pairs-1m"])
    args = parser.parse_args()
    surnames, first = builtin("surnames"), builtin("first-names")
    items = [line for line in (args.run / "val.txt").read_text(encoding="utf-8").split("\n") if line]
    if args.set == "emails":
        firsts = distribution(first[:2000], [1.0] * 2000)
        lasts = distribution(surnames[:20000], [1.0] * 20000)
        probs = [email_probability(item, firsts, lasts) for item in items]
    else:
        firsts = distribution(first, [1.0 / (r + 10) for r in range(len(first))])
        lasts = distribution(surnames, [1.0 / (r + 10) for r in range(len(surnames))])
        probs = [pair_probability(item, firsts, lasts) for item in items]
    missing = sum(p == 0.0 for p in probs)
    tokens = sum(len(item) + 1 for item in items)
    nll = -sum(math.log(p) for p in probs if p > 0) / tokens
    print(
        f"{args.set}: {len(items):,} val items, the generating rule's NLL {nll:.4f} nats/token ({missing} unexplained)"
    )


if __name__ == "__main__":
    main()
