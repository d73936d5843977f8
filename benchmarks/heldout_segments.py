"""Where the n-gram and a mix lose nats on heldout_data.py's e-mail addresses: each val item is cut by the rule
that wrote it (first name, separator, surname, digits, "@domain", end), and each part's log-probs under each run
are summed, next to the rule's own (uniform draws from the built-in lists: the floor under any model).

    python benchmarks/heldout_segments.py RUN_DIR [RUN_DIR ...]     # runs of heldout emails.txt (same split)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from heldout_data import DOMAINS, builtin

import makemore

PARTS = ("first name", "separator", "surname", "digits", "@domain", "end")


def cut(item: str, firsts: set[str], lasts: set[str]) -> tuple[list[int], list[float]] | None:
    """The part of each character (an index into PARTS; the end token last) and the rule's -log p of each part,
    for the first way the rule could have written `item` (a few items have several; any one will do here)."""
    local, _, domain = item.rpartition("@")
    stem = local.rstrip("0123456789")
    digits = local[len(stem) :]
    for cut_at in range(1, len(stem)):
        head, rest = stem[:cut_at], stem[cut_at:]
        for sep in (".", "_", ""):
            if head in firsts and rest.startswith(sep) and rest[len(sep) :] in lasts:
                surname = rest[len(sep) :]
                parts = [0] * len(head) + [1] * len(sep) + [2] * len(surname) + [3] * len(digits)
                parts += [4] * (len(domain) + 1) + [5]
                p_digits = 0.4 / 100 if digits else 0.6
                rule = [math.log(2000), math.log(3), math.log(20000), -math.log(p_digits), math.log(len(DOMAINS)), 0]
                return parts, rule
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    firsts, lasts = set(builtin("first-names")[:2000]), set(builtin("surnames")[:20000])
    items = [line for line in (args.runs[0] / "val.txt").read_text(encoding="utf-8").split("\n") if line]
    cuts = [cut(item, firsts, lasts) for item in items]
    tokens, rule = [0] * len(PARTS), [0.0] * len(PARTS)
    for parts, nll in filter(None, cuts):
        for part in parts:
            tokens[part] += 1
        for part, value in enumerate(nll):
            rule[part] += value
    nats = {}
    for run_dir in args.runs:
        scored = makemore.load(run_dir).score(items)
        sums = [0.0] * len(PARTS)
        for result, found in zip(scored, cuts):
            if found:
                for part, (_, logprob) in zip(found[0], result["char_logprobs"]):
                    sums[part] -= logprob
        nats[run_dir.name] = sums
    print(f"{sum(map(bool, cuts)):,} of {len(items):,} val items cut by the rule; nats per token of each part")
    print("| part | tokens | " + " | ".join(nats) + " | the rule (floor) |")
    print("|---|---:|" + "---:|" * (len(nats) + 1))
    for k, part in enumerate(PARTS):
        row = [f"{sums[k] / tokens[k]:.4f}" for sums in nats.values()] + [f"{rule[k] / tokens[k]:.4f}"]
        print(f"| {part} | {tokens[k]:,} | " + " | ".join(row) + " |")
    total = sum(tokens)
    row = [f"{sum(sums) / total:.4f}" for sums in nats.values()] + [f"{sum(rule) / total:.4f}"]
    print(f"| all | {total:,} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
