"""`makemore classify RUN ITEM ... | --file F`: the most probable label of each item under a labelled run, by
Bayes' rule on its conditional model; and the per-label part of `makemore eval` on a labelled run."""

from __future__ import annotations

import json
import sys
from typing import Any

from makemore.cli.common import Parser, emit
from makemore.data.lines import read_text
from makemore.errors import MakemoreError


def add_label_sample_flags(parser: Any) -> None:
    """--label and --blend, for sample and score."""
    parser.add_argument(
        "--label",
        help="labelled runs: draw (or score) given this label, or a blend of labels such as female=0.7,male=0.3 "
        "(default: p(item) = sum over labels of p(label) p(item | label))",
    )
    parser.add_argument(
        "--blend",
        default="mixture",
        choices=("mixture", "embedding"),
        help="a blend of labels: mixture = the labels' next-character distributions mixed at every step; "
        "embedding = one model reading the interpolated label embedding (neural models) (default: mixture)",
    )
    parser.add_argument(
        "--label-guidance",
        type=float,
        metavar="W",
        help="with one --label: draw items typical of it (classifier-free guidance at every character: W = 0 "
        "draws from p(item | label), 1 also weighs each item by p(label | item)) (default: 1.5)",
    )


def format_classified(results: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(
            json.dumps(
                {"item": r["item"], "label": r["label"], "probs": {k: round(v, 6) for k, v in r["probs"].items()}},
                ensure_ascii=False,
            )
            + "\n"
            for r in results
        )
    width = max((len(r["item"]) for r in results), default=0)
    return "".join(
        f"{r['item']:<{width}}  {r['label']}  "
        + " ".join(f"{name}:{p:.3f}" for name, p in sorted(r["probs"].items(), key=lambda kv: -kv[1]))
        + "\n"
        for r in results
    )


def cmd_classify(argv: list[str]) -> int:
    from makemore.api import Run

    parser = Parser(
        prog="makemore classify",
        description="The most probable label of each item under a labelled run: p(label | item) ∝ "
        "p(item | label) p(label).",
    )
    parser.add_argument("run", help="a run trained with --labelled")
    parser.add_argument("items", nargs="*", help="items to classify")
    parser.add_argument("-f", "--file", help="also classify every line of this file ('-': standard input)")
    parser.add_argument(
        "--format", default="text", choices=("text", "jsonl"), help="jsonl: item, label, probs (default: text)"
    )
    parser.add_argument("--batch-size", type=int, default=512, help="items per forward pass (default: 512)")
    parser.add_argument("-o", "--out", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise MakemoreError("--batch-size must be >= 1")
    items = list(args.items)
    if args.file:
        text = sys.stdin.read() if args.file == "-" else read_text(args.file)
        items += [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise MakemoreError("nothing to classify: give items or --file FILE")
    if any(not item for item in items):
        raise MakemoreError("cannot classify an empty string")
    run = Run.load(args.run, args.device)
    results = run.classify(items, args.batch_size)
    emit(format_classified(results, args.format), args.out, len(results), "items")
    return 0


def format_label_report(reports: dict[str, dict[str, Any]]) -> str:
    """`makemore eval` of a labelled run: per split, NLL given the label vs without it, accuracy, confusion."""
    lines = []
    for name, r in reports.items():
        lines.append(
            f"{name:>6}: given the label: nll {r['nll']:.4f}; without it (sum over labels): "
            f"{r['unconditional_nll']:.4f}; classification accuracy {r['accuracy']:.4f} "
            f"(majority class {r['majority_accuracy']:.4f}; {r['items']} items)\n"
        )
        for label, p in r["per_label"].items():
            lines.append(
                f"        {label}: {p['items']} items, nll {p['nll']:.4f} "
                f"(without the label {p['unconditional_nll']:.4f}), accuracy {p['accuracy']:.4f}\n"
            )
        width = max(len(label) for label in r["labels"])
        lines.append("        confusion (rows: true label, columns: predicted)\n")
        lines.append("        " + " " * width + "  " + "  ".join(f"{label:>{width}}" for label in r["labels"]) + "\n")
        for label, row in zip(r["labels"], r["confusion"]):
            lines.append(f"        {label:>{width}}  " + "  ".join(f"{n:>{width}}" for n in row) + "\n")
    return "".join(lines)
