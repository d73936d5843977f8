"""Sampling speed: items per second for every registered model at N = 1, 100, 10,000, with and without constraints.

    python benchmarks/sample_speed.py                          # trains each model in MODELS briefly, then measures
    python benchmarks/sample_speed.py --runs runs/a runs/b     # measure existing line-mode run directories
    python benchmarks/sample_speed.py --models transformer,mlp --train-seconds 60 --flags "transformer=--n-embd 64"

Columns (all through `Run.generate`, the code path of `makemore sample`):
  warm-up          12 single-item calls, timed once: a process's first decodes (lazy imports, first allocations)
  plain N          N items in one call, unconstrained (N = 1: the mean over repeated calls: interactive use);
                   `makemore sample`'s default path (--format plain: no log-probs, no nearest-item search)
  constrained N    --prefix P --suffix S --min-len 4, P and S the commonest first and last characters of the data
  only-new 10000   10,000 items that are in none of the data splits (draws more until enough)
  recompute 1000   the naive path for reference (original makemore): 1,000 items, whole prefix every step, no state
A last table times the nearest-training-item search (rapidfuzz) against 100,000 training items.
Numbers depend on the machine and its load; the device is printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import makemore
from makemore.cli import run as cli_run
from makemore.data.lines import builtin_text, parse_items
from makemore.generation.constraints import ConstraintSpec, build_constraint
from makemore.generation.novelty import NoveltyIndex
from makemore.generation.sample import DecodeOptions, generate_recompute
from makemore.models import MODELS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def train_runs(models: list[str], data: str, seconds: float, flags: dict[str, list[str]], root: Path) -> list[Path]:
    runs = []
    for name in models:
        out = root / name
        argv = ["train", "-i", data, "--model", name, "-o", str(out), "--samples", "0", "--time-budget", str(seconds)]
        argv += ["--max-steps", "1000000", "--eval-every", "1000", "--patience", "0"] if name != "ngram" else []
        argv += flags.get(name, [])
        print(f"training {name} for up to {seconds:.0f}s ...", file=sys.stderr)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli_run(argv)
        if code != 0:
            raise SystemExit(f"training {name} failed ({code}): makemore {shlex.join(argv)}")
        runs.append(out)
    return runs


def timed(fn, repeat: int = 1, warmup: bool = True) -> float:
    """Best wall-clock seconds of `repeat` calls (after one warm-up call, unless warmup=False)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def per_call(fn, calls: int) -> float:
    """Mean seconds per call over `calls` calls (after a warm-up)."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(run: makemore.Run, sizes: list[int], seed: int) -> dict[str, str]:
    train = run.novelty.train_list
    first = Counter(item[0] for item in train).most_common(1)[0][0]
    last = Counter(item[-1] for item in train).most_common(1)[0][0]
    constrained = {"prefix": first, "suffix": last, "min_len": 4}
    row: dict[str, str] = {"model": run.model_name, "params": f"{run.model.parameter_count():,}"}
    for kind, options in (("", {}), ("constrained ", constrained)):  # longer items take more steps
        lengths = [len(item["item"]) for item in run.generate(1000, seed=seed, nearest=False, **options).items]
        row[f"{kind}mean len"] = f"{statistics.mean(lengths):.1f}"

    def draw(n: int, **options):  # what `makemore sample` does with the default --format plain
        return run.generate(n, seed=seed, nearest=False, logprobs=False, **options)

    # a process's first decodes pay for lazy imports and first allocations: time them once
    start = time.perf_counter()
    for _ in range(12):
        draw(1)
    row["warm-up: 12 calls, N=1"] = f"{(time.perf_counter() - start) * 1e3:.0f} ms"

    for kind, options in (("plain", {}), ("constrained", constrained)):
        for n in sizes:
            if n == 1:
                seconds = per_call(lambda o=options: draw(1, **o), 50)
            else:
                big = n >= 5000  # warmed up by the smaller sizes; one call is long enough to time
                seconds = timed(lambda n=n, o=options: draw(n, **o), 1 if big else 3, not big)
            row[f"{kind} {n}"] = f"{n / seconds:,.0f}/s ({seconds * 1e3:.1f} ms)"
    seconds = timed(lambda: draw(10_000, only_new=True), 1, warmup=False)
    row["only-new 10000"] = f"{seconds:.2f} s"
    constraint = build_constraint(ConstraintSpec(max_len=run.default_max_len), run.vocab)
    seconds = timed(
        lambda: generate_recompute(run.model, 1000, constraint, DecodeOptions(), torch.Generator().manual_seed(seed)),
        warmup=False,
    )
    row["recompute 1000"] = f"{1000 / seconds:,.0f}/s ({seconds * 1e3:.0f} ms)"
    return row


def novelty_table(run: makemore.Run, seed: int) -> list[str]:
    """Nearest-training-item search: 1,000 sampled queries against 100,000 training items."""
    train = parse_items(builtin_text("surnames"), "surnames", 256) + parse_items(builtin_text("first-names"), "", 256)
    rng = random.Random(seed)
    while len(set(train)) < 100_000:  # top up with the model's own samples
        train += run.sample(n=10_000, seed=rng.randrange(1 << 30))
    train = sorted(set(train))[:100_000]
    start = time.perf_counter()
    index = NoveltyIndex(train)
    build = time.perf_counter() - start
    queries = run.sample(n=1000, seed=seed + 1)
    novel = sum(q not in index.train for q in queries)
    lines = [f"nearest training item, {len(train):,} training items, 1,000 queries ({novel} not in the index):"]
    lines.append(f"  index build: {build * 1e3:.0f} ms")
    start = time.perf_counter()
    index.nearest(queries[:1], max_distance=1)  # builds the one-edit (deletion-neighbourhood) index on first use
    lines.append(f"  one-edit index build (on first use): {(time.perf_counter() - start) * 1e3:.0f} ms")
    for label, bound in (
        ("exact nearest (jsonl report)", None),
        ("within distance 2 (--min-distance 3)", 2),
        ("within distance 1 (--min-distance 2)", 1),
    ):
        seconds = timed(lambda b=bound: index.nearest(queries, max_distance=b), warmup=False)
        lines.append(f"  {label}: {seconds:.2f} s = {seconds:.3f} ms/query")
    return lines


def markdown(rows: list[dict[str, str]]) -> list[str]:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", help="line-mode run directories to measure (default: train each model)")
    trainable = ",".join(name for name, spec in MODELS.items() if not spec.made_by)  # mix is made from runs
    parser.add_argument("--models", default=trainable, help="models to train (default: every trainable one)")
    default_data = str(SHARED / "names-train.txt") if (SHARED / "names-train.txt").exists() else "first-names"
    parser.add_argument("--data", default=default_data, help=f"training data (default: {default_data})")
    parser.add_argument("--train-seconds", type=float, default=30, help="training time per model (default: 30)")
    parser.add_argument("--flags", action="append", default=[], help='model flags, e.g. "transformer=--n-embd 64"')
    parser.add_argument("--sizes", default="1,100,1000,10000", help="batch sizes N (default: 1,100,1000,10000)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as `makemore sample`)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-novelty", action="store_true", help="skip the nearest-item timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    flags = {}
    for entry in args.flags:
        name, _, rest = entry.partition("=")
        flags[name] = shlex.split(rest)
    with tempfile.TemporaryDirectory() as tmp:
        runs = (
            [Path(r) for r in args.runs]
            if args.runs
            else train_runs(args.models.split(","), args.data, args.train_seconds, flags, Path(tmp))
        )
        rows = []
        for path in runs:
            run = makemore.load(path, args.device)
            print(f"measuring {run.model_name} ({path}) ...", file=sys.stderr)
            rows.append(measure(run, sizes, args.seed))
            print(rows[-1], file=sys.stderr, flush=True)  # partial results survive an interrupted run
        device = (
            torch.cuda.get_device_name()
            if run.model.device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads"
        )
        print(f"sampling speed on {device} (torch {torch.__version__}); items/s (wall time of the call)")
        print("\n".join(markdown(rows)))
        if not args.no_novelty:
            print()
            print("\n".join(novelty_table(run, args.seed)))


if __name__ == "__main__":
    main()
