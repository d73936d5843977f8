"""Big inputs: memory proportional to the data, and a giant line refused quickly.

    python benchmarks/robustness/big_inputs.py            # 100k and 1M lines, a 50 MB line

1. Tensorising a split: the foundation's per-item Python loop into a padded (N, longest) matrix, against the token
   stream that LineSplit keeps now (one vectorised pass). Time and bytes held, for 1M generated names, with and
   without one 256-character line among them (padding made that one line cost N x 257 x 16 bytes before).
2. `makemore train` end to end (a few steps) on 100k and 1M generated lines, in a child process: wall time and peak
   RSS (ru_maxrss of the child), to see memory grow with the data, not faster.
3. A single 50 MB line in line mode: `--max-item-len` refuses it; time and peak RSS of the refusal.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from makemore.data.lines import BOUNDARY, IGNORE, LineSplit, Vocab


def names(count: int, seed: int = 0, long_one: bool = False) -> list[str]:
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    syllables = (rng.randint(1, 5) for _ in range(count))
    items = ["".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(k)) for k in syllables]
    if long_one:
        items[count // 2] = "x" * 256
    return items


def old_line_split(items: list[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """The foundation's LineSplit.__init__ (commit c35c7cb), for comparison."""
    n = len(items)
    lengths = [len(item) + 1 for item in items]
    width = max(lengths, default=1)
    inputs = torch.full((n, width), BOUNDARY, dtype=torch.long)
    targets = torch.full((n, width), IGNORE, dtype=torch.long)
    for row, item in enumerate(items):
        ids = vocab.encode(item)
        inputs[row, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        targets[row, : len(ids) + 1] = torch.tensor(ids + [BOUNDARY], dtype=torch.long)
    return inputs, targets


def tensorise(count: int, long_one: bool, old: bool) -> None:
    items = names(count, long_one=long_one)
    vocab = Vocab.from_texts(items)
    start = time.perf_counter()
    if old:
        inputs, targets = old_line_split(items, vocab)
        held = inputs.nbytes + targets.nbytes
        label = "per-item loop, padded (N, L) int64 x2"
    else:
        split = LineSplit(items, vocab)
        held = split.stream.nbytes + split.lengths.nbytes + split.offsets.nbytes
        label = "token stream int32 + offsets"
    seconds = time.perf_counter() - start
    chars = sum(map(len, items))
    print(f"| {count:,} | {'yes' if long_one else 'no'} | {label} | {seconds:.2f} | {held / 2**20:.0f} MB "
          f"| {held / (chars + count):.1f} |")  # fmt: skip


WRAPPER = (  # runs the command and reports the peak RSS of that one child: a fresh measurement per command
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def peak_rss_of(argv: list[str], timeout: float = 1800) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS in MB of the command, its last stderr line)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    lines = result.stderr.strip().splitlines()
    rss = int(lines[-1].split()[1]) / 1024
    last = (lines[-2] if len(lines) > 1 else "")[-200:]
    return result.returncode, seconds, rss, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "makemore-robustness" / "big")
    parser.add_argument("--skip-old", action="store_true", help="don't time the old per-item loop (slow)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    print("## 1. tensorising one split\n")
    print("| items | one 256-char item | representation | seconds | bytes held | bytes per token |")
    print("|---|---|---|---|---|---|")
    for long_one in (False, True):
        tensorise(1_000_000, long_one, old=False)
        if not args.skip_old:
            tensorise(1_000_000, long_one, old=True)

    print("\n## 2. makemore train, a few steps (child process)\n")
    print("| lines | file | exit | wall s | peak RSS |")
    print("|---|---|---|---|---|")
    for count in (100_000, 1_000_000):
        path = args.workdir / f"names-{count}.txt"
        path.write_text("\n".join(names(count, seed=count)) + "\n")
        code, seconds, rss, last = peak_rss_of([
            sys.executable, "-m", "makemore", "train", "-i", str(path), "-o", str(args.workdir / f"run-{count}"),
            "--force", "--mode", "line", "--model", "mlp", "--max-steps", "5", "--eval-every", "5", "--samples", "0",
            "--threads", "1", "--device", "cpu",
        ])  # fmt: skip
        print(f"| {count:,} | {path.stat().st_size / 2**20:.1f} MB | {code} | {seconds:.1f} | {rss:.0f} MB |")

    print("\n## 3. one 50 MB line, line mode\n")
    path = args.workdir / "one-line.txt"
    with path.open("wb") as handle:
        handle.write(b"ab" * (25 * 2**20) + b"\n")
    code, seconds, rss, last = peak_rss_of([
        sys.executable, "-m", "makemore", "train", "-i", str(path), "-o", str(args.workdir / "run-line"), "--force",
        "--mode", "line", "--max-item-len", "256",
    ])  # fmt: skip
    print(f"exit {code} after {seconds:.1f}s (Python start-up included), peak RSS {rss:.0f} MB: {last}")


if __name__ == "__main__":
    main()
