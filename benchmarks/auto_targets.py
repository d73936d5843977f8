"""`--model auto` against its targets: the whole command's wall time, val and test NLL, and the Kneser-Ney n-gram's
val NLL on the same split (the plan's first member), for each case asked.

    python benchmarks/auto_targets.py default names-120 names-600      # the cases by name (see CASES)
    python benchmarks/auto_targets.py names-1800 --markdown benchmarks/results/auto.md
    python benchmarks/heldout_data.py /tmp/heldout && python benchmarks/auto_targets.py --held-out /tmp/heldout \
        held:cyrillic held:emails                           # a file of that folder, 600 s (held:NAME:SECONDS)

Runs the real CLI (`makemore train`, `makemore eval --format json`) in subprocesses, one case after another, so
what it measures is what a user gets; run it on a quiet machine (the budget is wall time). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAMES = ["-i", str(DATA / "names-train.txt"), "--val-file", str(DATA / "names-val.txt")]
NAMES += ["--test-file", str(DATA / "names-test.txt")]
CASES = {
    "default": ([], None),  # `makemore train`: the built-in first names, its default budget
    "names-120": (NAMES, 120),
    "names-600": (NAMES, 600),
    "names-1800": (NAMES, 1800),
    "surnames-600": (["-i", "surnames"], 600),
    "shakespeare-600": (["-i", str(DATA / "tinyshakespeare.txt")], 600),
    "shakespeare-1800": (["-i", str(DATA / "tinyshakespeare.txt")], 1800),
}


def makemore(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "makemore", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"makemore {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def nlls(run: Path) -> dict[str, float]:
    """NLL of each held-out split the run has (a stream run's default split has no test); train is not read (a
    million items' mix takes minutes)."""
    out = {}
    for split in ("val", "test"):
        try:
            metrics = json.loads(makemore("eval", str(run), "--split", split, "--format", "json"))
        except SystemExit:  # no such split (a stream run's default has no test)
            continue
        if split in metrics:
            out[split] = metrics[split]["nll"]
    return out


def case_args(name: str, held_out: Path | None) -> tuple[list[str], int | None]:
    """A named case, or held:NAME[:SECONDS]: NAME.txt of the --held-out folder, 600 s unless SECONDS is given."""
    if not name.startswith("held:"):
        return CASES[name]
    if held_out is None:
        raise SystemExit(f"{name}: give --held-out DIR (made by benchmarks/heldout_data.py)")
    _, file, *seconds = name.split(":")
    return ["-i", str(held_out / f"{file}.txt")], int(seconds[0]) if seconds else 600


def run_case(name: str, root: Path, held_out: Path | None = None) -> dict:
    args, budget = case_args(name, held_out)
    out = root / name.replace(":", "-")
    command = ["train", *args, "--out", str(out), "--samples", "0"]
    if budget is not None:
        command += ["--time-budget", str(budget)]
    started = time.perf_counter()
    printout = makemore(*command)
    wall = time.perf_counter() - started
    (root / f"{out.name}.txt").write_text(printout, encoding="utf-8")  # what the user sees (the README's example)
    state = json.loads((out / "auto.json").read_text())
    members = {name: round(member["val_nll"], 4) for name, member in state["done"].items()}
    # a member mixed as its memory (NAME-knn) has no weight of its own
    weights = {name: round(member["weight"], 3) for name, member in state["done"].items() if "weight" in member}
    kn = members["1-ngram"]
    held_out = nlls(out)
    val, test = held_out["val"], held_out.get("test")
    return {
        "case": name, "budget": budget, "wall_s": round(wall, 1), "val": round(val, 4),
        "test": None if test is None else round(test, 4), "kn_val": kn, "gain_over_kn": round(kn - val, 4),
        "members": members, "weights": weights, "slots": state["plan"].get("slots", 1),
    }  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| case | budget | wall | val | test | KN val | gain | members (val) | weights |", "|---" * 9 + "|"]
    for r in rows:
        members = ", ".join(f"{k} {v}" for k, v in r["members"].items())
        weights = ", ".join(f"{v}" for v in r["weights"].values())
        lines.append(
            f"| {r['case']} | {r['budget'] or 'default'} | {r['wall_s']} s | {r['val']} | {r['test']} | {r['kn_val']} "
            f"| {r['gain_over_kn']} | {members} | {weights} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help=f"{', '.join(sorted(CASES))} or held:NAME[:SECONDS]")
    parser.add_argument("--held-out", type=Path, help="the folder benchmarks/heldout_data.py wrote")
    parser.add_argument(
        "--keep", type=Path, help="keep the runs and what each printed (CASE.txt) here (default: a temporary folder)"
    )
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or Path(temporary)
        for case in args.cases:
            rows.append(run_case(case, root, args.held_out))
            print(json.dumps(rows[-1]), flush=True)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as handle:
            handle.write(markdown(rows))


if __name__ == "__main__":
    main()
