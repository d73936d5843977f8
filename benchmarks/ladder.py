"""The model ladder: train every registered model with its recommended config on names, print one table.

    python benchmarks/ladder.py                       # every model, its registry defaults, names split
    python benchmarks/ladder.py --models ngram mlp    # a subset
    python benchmarks/ladder.py --time-budget 300     # cap each model's training time (seconds)

Runs the real CLI (`makemore train`, `makemore eval --format json`) in subprocesses, so what it measures is what a
user gets. Writes the table as Markdown to --markdown (default benchmarks/results/ladder.md). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from makemore.models import MODELS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def makemore(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "makemore", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"makemore {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def train_one(name: str, out: Path, time_budget: float | None, extra: list[str]) -> dict:
    args = [
        "train",
        "-i",
        str(DATA / "names-train.txt"),
        "--val-file",
        str(DATA / "names-val.txt"),
        "--test-file",
        str(DATA / "names-test.txt"),
        "--model",
        name,
        "--out",
        str(out),
        "--force",
        "--samples",
        "0",
        *extra,
    ]
    if time_budget is not None and MODELS[name].model_class.trainable:
        args += ["--time-budget", str(time_budget)]
    start = time.perf_counter()
    stdout = makemore(*args)
    wall = time.perf_counter() - start
    params = next((line.split(":")[1].strip() for line in stdout.splitlines() if line.startswith("parameters:")), "?")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in metrics if m.get("event") == "train"]
    elapsed = max((m.get("elapsed", 0.0) for m in metrics), default=0.0)
    result = json.loads(makemore("eval", str(out), "--split", "all", "--format", "json"))
    return {
        "model": name,
        "params": params,
        "train_s": elapsed,
        "wall_s": wall,
        "tokens_per_s": sum(rates) / len(rates) if rates else None,
        "val": result["val"]["nll"],
        "test": result["test"]["nll"],
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params | train time (s) | tokens/s | val NLL | test NLL |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        rate = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "closed form"
        cells = [r["model"], r["params"], f"{r['train_s']:.1f}", rate, f"{r['val']:.4f}", f"{r['test']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[m for m in MODELS if m != "mix"])
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per trainable model")
    parser.add_argument("--runs", default="runs/ladder", help="where the run directories go")
    parser.add_argument("--markdown", default="benchmarks/results/ladder.md")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: the trainer's automatic choice)")
    parser.add_argument("--mix", nargs="*", default=None, help="models whose runs to mix at the end (e.g. ngram gru)")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"needs the names split in {DATA}")
    rows = []
    for name in args.models:
        extra = ["--threads", str(args.threads)] if args.threads else []
        rows.append(train_one(name, Path(args.runs) / name, args.time_budget, extra))
        print(json.dumps(rows[-1]), flush=True)
    if args.mix and "mix" in MODELS:
        out = Path(args.runs) / "mix"
        start = time.perf_counter()
        makemore("mix", *[str(Path(args.runs) / m) for m in args.mix], "--out", str(out), "--force")
        result = json.loads(makemore("eval", str(out), "--split", "all", "--format", "json"))
        rows.append(
            {
                "model": "mix(" + "+".join(args.mix) + ")",
                "params": "-",
                "train_s": time.perf_counter() - start,
                "wall_s": 0.0,
                "tokens_per_s": None,
                "val": result["val"]["nll"],
                "test": result["test"]["nll"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
