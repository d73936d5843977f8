"""Peak memory of stream mode on a large text file (issue: a 100 MB file must not need more than ~2x its size).

Generates a text file of --mb megabytes (random words in sentences and paragraphs; only its size matters), then runs
each step in a fresh Python process and prints that process's peak resident set size (ru_maxrss):

  baseline   import makemore and torch, nothing else (what every step pays before touching the data)
  encode     read_corpus: two streaming passes, ids in RAM (uint8)
  memmap     read_corpus with the ids on a memory-mapped temporary file (what happens above half the free memory);
             its pages count in RSS while resident, but they are file-backed: the kernel can drop them under pressure
  train      makemore train --mode stream: the neural bigram, 20 steps, evaluation of the whole val tail
  train 1MB  the same on a 1 MB file: the libraries and buffers training touches whatever the data's size, so
             that train minus train 1MB is what the data itself costs

    python benchmarks/stream_memory.py --mb 100

Not run by CI. Timings on a shared machine are noisy; the memory figures are what this measures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import resource, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads(1)
from makemore import cli
from makemore.data.corpus import read_corpus
step, path, work = sys.argv[1], sys.argv[2], sys.argv[3]
if step == "encode":
    corpus = read_corpus(path)
elif step == "memmap":
    corpus = read_corpus(path, memmap_above=0, cache_dir=work)
    corpus.ids.sum()  # touch every page
elif step == "train":
    cli.run(["train", "-i", path, "--mode", "stream", "--model", "bigram", "--seq-len", "64",
             "--max-steps", "20", "--eval-every", "20", "--eval-batch-size", "1024", "--samples", "0",
             "--threads", "1", "-o", work + "/run", "--force"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - start)
"""


def make_text(path: Path, megabytes: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    words = ["".join(rng.choice(letters, size=rng.integers(1, 9))) for _ in range(5000)]
    target = int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < target:
            picks = rng.integers(0, len(words), 200_000)
            text = " ".join(words[i] for i in picks)
            # sentences and paragraphs: a full stop and line break every ~12 words, a blank line every ~8 lines
            parts = text.split(" ")
            for i in range(12, len(parts), 12):
                parts[i] = parts[i] + (".\n\n" if i % 96 == 0 else ".\n")
            chunk = " ".join(parts)[: target - written]
            handle.write(chunk)
            written += len(chunk)


def measure(step: str, path: Path, work: Path) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, step, str(path), str(work)], capture_output=True, text=True, check=True
    )
    rss, seconds = out.stdout.strip().splitlines()[-1].split()
    return int(rss), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated text file (default: 100)")
    parser.add_argument("--steps", default="baseline,encode,memmap,train")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "big.txt"
        start = time.perf_counter()
        make_text(path, args.mb)
        size = path.stat().st_size
        print(f"text file: {size / 1e6:.1f} MB, generated in {time.perf_counter() - start:.1f}s")
        print(f"{'step':<10} {'peak RSS':>10} {'over baseline':>14} {'x file size':>12} {'seconds':>8}")
        baseline = None
        for step in args.steps.split(","):
            rss, seconds = measure(step, path, Path(work))
            baseline = rss if step == "baseline" else baseline
            extra = rss - baseline if baseline is not None else float("nan")
            print(f"{step:<10} {rss / 1e6:>8.0f}MB {extra / 1e6:>12.0f}MB {extra / size:>12.2f} {seconds:>8.1f}")
            if step == "train":  # the same job on a 1 MB file: what training costs whatever the data's size
                small = Path(work) / "small.txt"
                make_text(small, 1.0)
                small_rss, small_seconds = measure("train", small, Path(work))
                print(
                    f"{'train 1MB':<10} {small_rss / 1e6:>8.0f}MB {(small_rss - baseline) / 1e6:>12.0f}MB {'':>12} "
                    f"{small_seconds:>8.1f}"
                )
                print(
                    f"data-dependent memory of training: {(rss - small_rss) / 1e6:.0f} MB = "
                    f"{(rss - small_rss) / size:.2f} x the file size (train minus train 1MB)"
                )


if __name__ == "__main__":
    main()
