"""`makemore sample`, `makemore eval` and `makemore score`: use a trained run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from makemore.cli.classify import add_label_sample_flags, format_label_report
from makemore.cli.common import Parser, emit, format_items
from makemore.data.lines import Vocab, read_text
from makemore.errors import MakemoreError
from makemore.generation.search import MAX_EXPANSIONS
from makemore.runs import checkpoint as ckpt


def max_item_len(spec: ckpt.RunSpec, splits: dict[str, list[str]] | None = None) -> int:
    if "max_len" in spec.data:
        return int(spec.data["max_len"])
    lengths = [len(item) for split in (splits or {}).values() for item in split]
    return max(lengths, default=32) * 2


def decode_all(vocab: Vocab, outputs: list[list[int]]) -> list[str]:
    return [vocab.decode(ids) for ids in outputs]


def novelty_sets(run_dir: Path) -> tuple[set[str], set[str]]:
    train = set(ckpt.read_split_items(run_dir, "train"))
    held_out = set(ckpt.read_split_items(run_dir, "val")) | set(ckpt.read_split_items(run_dir, "test"))
    return train, held_out


def status_of(item: str, sets: tuple[set[str], set[str]]) -> str:
    if item in sets[0]:
        return "in-train"
    return "in-val-test" if item in sets[1] else "new"


def print_samples(items: list[str], sets: tuple[set[str], set[str]]) -> None:
    width = max((len(item) for item in items), default=0)
    for item in items:
        print(f"{item:<{width}}  {status_of(item, sets)}")


def build_sample_parser() -> Parser:
    parser = Parser(
        prog="makemore sample",
        description="Generate new items from a trained run. Constraints are exact: every item satisfies them.",
    )
    parser.add_argument("run", help="run directory")
    parser.add_argument("-n", "--num", type=int, help="how many items (default: 20)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default: 1: a decoding step is many tiny ops, which a "
        "second thread slows down, badly so when another process keeps a core busy)",
    )
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--temperature", type=float, default=1.0, help="< 1 sharper, > 1 more varied (default: 1)")
    decoding.add_argument("--top-k", type=int, help="sample only among the k most likely characters")
    decoding.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with probability >= p")
    decoding.add_argument("--greedy", action="store_true", help="always take the most likely character")
    decoding.add_argument(
        "--best",
        type=int,
        metavar="K",
        help="exactly the K most probable items that meet the constraints and filters, most probable first "
        "(best-first search)",
    )
    decoding.add_argument(
        "--max-expansions",
        type=int,
        metavar="N",
        help=f"--best: give up (with an error) after expanding N prefixes (default: {MAX_EXPANSIONS:,})",
    )
    decoding.add_argument(
        "--beam",
        type=int,
        metavar="K",
        help="beam search: K probable items, best first; faster than --best but approximate (it may miss some of "
        "the K most probable)",
    )
    decoding.add_argument("--beam-width", type=int, metavar="W", help="beam: hypotheses kept per step (default: K)")
    decoding.add_argument(
        "--length-penalty",
        type=float,
        default=0.0,
        metavar="A",
        help="beam: rank by logprob / length**A (default: 0, pure probability)",
    )
    constraints = parser.add_argument_group("constraints (exact: enforced by masking inside the sampler)")
    constraints.add_argument("--prefix", default="", help="every item starts with this text")
    constraints.add_argument("--suffix", default="", help="every item ends with this text")
    constraints.add_argument("--contains", action="append", default=[], help="every item contains this (repeatable)")
    constraints.add_argument("--regex", help="every item fully matches this regular expression")
    constraints.add_argument("--charset", help="items use only these characters")
    constraints.add_argument(
        "--min-len", type=int, default=1, help="shortest item in characters (default: 1: no empty items)"
    )
    constraints.add_argument("--max-len", type=int, help="longest item in characters (default: 2x the longest seen)")
    constraints.add_argument(
        "--particles",
        type=int,
        default=1,
        metavar="M",
        help="sequential Monte Carlo with M particles per item: items follow the model conditioned on the "
        "constraints more closely than masking alone (M times the work; default: 1, masking alone)",
    )
    constraints.add_argument(
        "--conditioning",
        choices=("auto", "reject", "mask"),
        default="auto",
        help="how items meet suffix/contains/regex/charset constraints: reject = draw given the prefix and keep "
        "those that match (exactly the model conditioned on the constraints); mask = mask each step (always fast; "
        "skews towards items forced to match late); auto = reject while at least 0.5%% of draws match, then mask "
        "(default: auto)",
    )
    filters = parser.add_argument_group("filters (more candidates are drawn until -n pass)")
    filters.add_argument("--only-new", action="store_true", help="keep only items in none of the data splits")
    filters.add_argument("--unique", action="store_true", help="no item twice")
    filters.add_argument("--exclude-file", metavar="FILE", help="drop items listed in FILE (one per line)")
    filters.add_argument(
        "--min-distance", type=int, metavar="D", help="edit distance >= D to every item of the data (all splits)"
    )
    filters.add_argument(
        "--max-attempts", type=int, metavar="N", help="candidates to draw at most (default: max(1000, 100 n))"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        default="plain",
        choices=("plain", "text", "jsonl"),
        help="plain: items only; text: with log-prob and new/in-train/in-val-test; jsonl: everything, with the "
        "nearest item of any split (train, val, test) and its edit distance (default: plain)",
    )
    output.add_argument("-o", "--out", metavar="FILE", help="write the items to FILE (atomically) instead of stdout")
    add_label_sample_flags(parser.add_argument_group("labels (runs trained with --labelled)"))
    stream = parser.add_argument_group("stream-mode runs")
    stream.add_argument("--prompt", default="", help="stream-mode runs: the text to continue (default: a new line)")
    stream.add_argument("--length", type=int, default=500, help="stream-mode runs: characters to draw (default: 500)")
    return parser


LINE_ONLY_SAMPLE_FLAGS = (
    "suffix",
    "contains",
    "regex",
    "charset",
    "unique",
    "exclude_file",
    "min_distance",
    "beam_width",
    "best",
    "max_expansions",
    "beam",
    "prefix",
    "only_new",
    "max_len",
)


def read_exclude_file(path: str) -> set[str]:
    return {line.strip() for line in read_text(path).splitlines() if line.strip()}


def check_search_flags(args: argparse.Namespace) -> None:
    """--best (exact) and --beam (approximate) find the most probable items: sampling flags do not apply."""
    if args.best is not None and args.beam is not None:
        raise MakemoreError("give --best K (exact) or --beam K (approximate), not both")
    k, flag = (args.best, "--best") if args.best is not None else (args.beam, "--beam")
    if k is not None:
        sampling = [
            name
            for name, used in (
                ("--temperature", args.temperature != 1.0),
                ("--top-k", args.top_k is not None),
                ("--top-p", args.top_p is not None),
                ("--greedy", args.greedy),
                ("--particles", args.particles != 1),
                ("-n", args.num is not None and args.num != k),
            )
            if used
        ]
        if sampling:
            raise MakemoreError(f"{flag} K returns the K most probable items; it takes no {', '.join(sampling)}")
    if args.beam is None and (args.beam_width is not None or args.length_penalty):
        raise MakemoreError("--beam-width and --length-penalty need --beam K")
    if args.best is None and args.max_expansions is not None:
        raise MakemoreError("--max-expansions needs --best K")


def check_sample_flags(args: argparse.Namespace) -> None:
    if not 1 <= args.threads <= 1024:
        raise MakemoreError("--threads must be between 1 and 1024")
    if args.num is not None and args.num < 1:
        raise MakemoreError("-n must be >= 1")
    if not args.temperature > 0 or args.temperature > 1e6:
        raise MakemoreError("--temperature must be > 0 and finite")
    if args.top_k is not None and args.top_k < 1:
        raise MakemoreError("--top-k must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise MakemoreError("--top-p must be in (0, 1]")
    if args.max_len is not None and len(args.prefix) > args.max_len:
        raise MakemoreError(
            f"--prefix is {len(args.prefix)} characters, longer than --max-len {args.max_len}: no item could match"
        )
    check_search_flags(args)


def sample_stream(args: argparse.Namespace, run: Any) -> int:
    """`makemore sample` for a stream-mode run: --prompt, then --length characters printed as they are drawn."""
    used = [f"--{name.replace('_', '-')}" for name in LINE_ONLY_SAMPLE_FLAGS if getattr(args, name)]
    used += [flag for flag, value in (("--particles", args.particles), ("--min-len", args.min_len)) if value != 1]
    if used:
        raise MakemoreError(f"{', '.join(used)}: for line-mode runs; a stream run takes --prompt and --length")
    if args.length < 1:
        raise MakemoreError(f"--length must be >= 1, got {args.length}")
    run.vocab.check(args.prompt, "--prompt")
    chars = run.iter_text(
        args.prompt, args.length, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        greedy=args.greedy, seed=args.seed,
    )  # fmt: skip
    sys.stdout.write(args.prompt)
    for char in chars:
        sys.stdout.write(char)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_sample(argv: list[str]) -> int:
    from makemore.api import Run

    args = build_sample_parser().parse_args(argv)
    check_sample_flags(args)
    torch.set_num_threads(args.threads)
    run = Run.load(args.run, args.device)
    if run.spec.data.get("mode") == "stream":
        return sample_stream(args, run)
    if args.prompt:
        raise MakemoreError("--prompt is for stream-mode runs; items of a line-mode run start with --prefix")
    result = run.generate(
        args.num or 20,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
        best=args.best,
        max_expansions=args.max_expansions or MAX_EXPANSIONS,
        beam=args.beam,
        beam_width=args.beam_width,
        length_penalty=args.length_penalty,
        prefix=args.prefix,
        suffix=args.suffix,
        contains=args.contains,
        regex=args.regex,
        charset=args.charset,
        min_len=args.min_len,
        max_len=args.max_len,
        only_new=args.only_new,
        unique=args.unique,
        exclude=read_exclude_file(args.exclude_file) if args.exclude_file else (),
        min_distance=args.min_distance,
        max_attempts=args.max_attempts,
        particles=args.particles,
        conditioning=args.conditioning,
        label=args.label,
        blend=args.blend,
        label_guidance=args.label_guidance,
        nearest=args.format == "jsonl",
        logprobs=args.format != "plain",
    )
    if result.note:
        print(f"makemore sample: {result.note}", file=sys.stderr)
    emit(format_items(result.items, args.format), args.out, len(result.items), "items")
    return 0 if result.items else 1


def build_eval_parser() -> Parser:
    parser = Parser(prog="makemore eval", description="NLL (nats/token), bits/char and perplexity of a run.")
    parser.add_argument("run", help="run directory")
    parser.add_argument(
        "--split",
        default="all",
        choices=("train", "val", "test", "all"),
        help="which of the run's splits (default: all: every split that has items; stream-mode runs: val and test)",
    )
    parser.add_argument("-i", "--input", help="evaluate on this file instead of the run's splits")
    parser.add_argument(
        "--format", default="text", choices=("text", "json"), help="text: a line per split; json: one object"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1024, help="items (or windows) per forward pass (default: 1024)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument(
        "--stride",
        type=int,
        help="stream-mode runs of windowed models: score this many new chars per window (default: the largest "
        "stride that gives every char the model's full context, at least half the window)",
    )
    return parser


def format_eval(results: dict[str, dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        rounded = {
            name: {
                **{key: round(r[key], 6) for key in ("nll", "bpc", "ppl")},
                "tokens": r["tokens"],
                **({"context": r["context"]} if "context" in r else {}),
            }
            for name, r in results.items()
        }
        return json.dumps(rounded) + "\n"
    lines = [
        f"{name:>6}: nll {r['nll']:.4f} nats/token  {r['bpc']:.4f} bits/char  "
        f"perplexity {r['ppl']:.3f}  ({r['tokens']} tokens)\n"
        for name, r in results.items()
    ]
    context = next((r["context"] for r in results.values() if "context" in r), None)
    return "".join(lines) + (f"context: {context}\n" if context else "")


def cmd_eval(argv: list[str]) -> int:
    from makemore.api import Run

    args = build_eval_parser().parse_args(argv)
    if args.batch_size < 1:
        raise MakemoreError("--batch-size must be >= 1")
    run = Run.load(args.run, args.device)
    if not run.labels:
        sys.stdout.write(format_eval(run.evaluate(args.split, args.input, args.batch_size, args.stride), args.format))
        return 0
    # a labelled run: the NLL of p(item) = sum_k p(k) p(item | k) (not with -i: a labelled file has tabs), then
    # per label, given the true label, with the classification accuracy and confusion matrix
    results = {} if args.input else run.evaluate(args.split, None, args.batch_size, args.stride)
    reports = run.evaluate_labels(args.split, args.input)
    if args.format == "json":
        sys.stdout.write(json.dumps({"splits": json.loads(format_eval(results, "json")), "labels": reports}) + "\n")
    else:
        sys.stdout.write(format_eval(results, "text") + format_label_report(reports))
    return 0


def read_score_items(path: str) -> list[tuple[int, str]]:
    """(line number, item) for every non-blank line of `path` ('-': standard input)."""
    text = sys.stdin.read() if path == "-" else read_text(path)
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def format_scores(results: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(
            json.dumps(
                {
                    "item": r["item"],
                    "logprob": round(r["logprob"], 6),
                    "nll_per_token": round(r["nll_per_token"], 6),
                    "char_logprobs": [[c, round(lp, 4)] for c, lp in r["char_logprobs"]],
                },
                ensure_ascii=False,
            )
            + "\n"
            for r in results
        )
    if fmt == "tsv":
        rows = ["item\tlogprob\tnll_per_token\n"]
        rows += [f"{r['item']}\t{r['logprob']:.6f}\t{r['nll_per_token']:.6f}\n" for r in results]
        return "".join(rows)
    return "".join(
        f"{r['item']}\tlogprob {r['logprob']:.4f}\tnll/token {r['nll_per_token']:.4f}\t"
        + " ".join(f"{c}:{lp:.2f}" for c, lp in r["char_logprobs"])
        + "\n"
        for r in results
    )


def cmd_score(argv: list[str]) -> int:
    from makemore.api import Run

    parser = Parser(
        prog="makemore score",
        description="Log-probability of strings under a run's model: rank candidates, or flag odd entries.",
    )
    parser.add_argument("run")
    parser.add_argument("strings", nargs="*", help="items to score")
    parser.add_argument("-f", "--file", help="also score every line of this file ('-': standard input)")
    parser.add_argument(
        "--sort",
        nargs="?",
        const="nll",
        choices=("nll", "logprob"),
        help="most plausible first, by NLL per token (default) or by total log-prob",
    )
    parser.add_argument("--reverse", action="store_true", help="with --sort: most surprising first")
    parser.add_argument("--format", default="text", choices=("text", "tsv", "jsonl"), help="default: text")
    parser.add_argument("--skip-unknown", action="store_true", help="skip items with characters the model lacks")
    parser.add_argument("--batch-size", type=int, default=512, help="items per forward pass (default: 512)")
    parser.add_argument("-o", "--out", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", help="labelled runs: score given this label (or a blend like a=0.7,b=0.3)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise MakemoreError("--batch-size must be >= 1")
    if args.reverse and not args.sort:
        raise MakemoreError("--reverse needs --sort")
    if any(not s for s in args.strings):
        raise MakemoreError("cannot score an empty string")
    entries = [(f"argument {i}", s) for i, s in enumerate(args.strings, start=1)]
    if args.file:
        entries += [(f"{args.file}: line {number}", item) for number, item in read_score_items(args.file)]
    if not entries:
        raise MakemoreError("nothing to score: give strings or --file FILE")
    run = Run.load(args.run, args.device)
    items, skipped = [], 0
    for where, item in entries:
        unknown = run.vocab.unknown(item)
        if not unknown:
            items.append(item)
        elif args.skip_unknown:
            skipped += 1
        else:
            shown = " ".join(repr(c) for c in unknown[:10])
            raise MakemoreError(
                f"{where}: item {item[:40]!r} has characters not in the model's vocabulary: {shown}"
                + (" (--skip-unknown skips such items)" if args.file else "")
            )
    if skipped:
        print(f"makemore score: skipped {skipped} items with characters not in the model's vocabulary", file=sys.stderr)
    results = run.score(items, batch_size=args.batch_size, label=args.label) if items else []
    if args.sort == "nll":
        results.sort(key=lambda r: r["nll_per_token"], reverse=args.reverse)
    elif args.sort == "logprob":
        results.sort(key=lambda r: r["logprob"], reverse=not args.reverse)
    emit(format_scores(results, args.format), args.out, len(results), "scores")
    return 0 if results else 1
