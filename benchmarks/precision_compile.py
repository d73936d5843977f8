"""Training-step throughput of fp32 / bf16 / fp16 autocast, eager / torch.compile, measured interleaved.

    python benchmarks/precision_compile.py --model mlp --rounds 7 --steps 30
    python benchmarks/precision_compile.py --model transformer --variants fp32,bf16 --threads 1

Every variant gets its own Trainer on the same model weights and the same batches. After a warm-up (which holds
the compilation), the variants take turns: each round times `--steps` optimizer steps of every variant in a
rotated order, so a noisy machine (other jobs, frequency changes) disturbs all variants alike. Reported: the median
useful (non-padding) tokens/s over rounds, its spread, and the ratio to the first variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from makemore import config as config_mod
from makemore.data.lines import IGNORE, LineSplit, Vocab, read_items
from makemore.models import MODELS, build_model
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--variants", default="fp32,bf16,fp32+compile,bf16+compile", help="dtype[+compile],...")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first (compilation)")
    parser.add_argument("--batch-size", type=int, help="default: the model's recommendation")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--train", help="training items (default: ../shared/data/names-train.txt or first-names)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_path = args.train or (
        str(SHARED / "names-train.txt") if (SHARED / "names-train.txt").exists() else "first-names"
    )
    items, _ = read_items(train_path)
    vocab = Vocab.from_texts(items)
    split = LineSplit(items, vocab)
    spec = MODELS[args.model]
    base = config_mod.replace(TrainConfig(), **spec.train_defaults)
    if args.batch_size:
        base = config_mod.replace(base, batch_size=args.batch_size)
    base = config_mod.replace(base, device="cpu", max_steps=10**9, warmup_steps=0, schedule="constant")

    torch.manual_seed(0)
    reference = build_model(args.model, spec.config_class(), vocab.size)
    trainers: dict[str, Trainer] = {}
    scratch = tempfile.TemporaryDirectory()
    for name in args.variants.split(","):
        dtype, _, extra = name.partition("+")
        model = build_model(args.model, spec.config_class(), vocab.size)
        model.load_state_dict(reference.state_dict())
        config = config_mod.replace(base, dtype=dtype, compile=extra == "compile")
        trainers[name] = Trainer(model, {"train": split}, config, Path(scratch.name) / name)
        trainers[name].model.train()

    def run(trainer: Trainer, steps: int) -> tuple[int, float]:
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            x, y = trainer.sampler.next()
            trainer.train_step(x, y, trainer.config.lr)
            tokens += int((y != IGNORE).sum())
        return tokens, time.perf_counter() - start

    for name, trainer in trainers.items():
        _, seconds = run(trainer, args.warmup)
        fell_back = trainer.config.compile and trainer.train_forward is trainer.eager_forward
        print(f"warm-up {name:<14} {seconds:7.1f}s{'  (compile failed: eager)' if fell_back else ''}", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    names = list(trainers)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            tokens, seconds = run(trainers[name], args.steps)
            rates[name].append(tokens / seconds)
    first = statistics.median(rates[names[0]])
    print(
        f"{args.model}, batch {base.batch_size}, threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__}"
    )
    for name in names:
        median = statistics.median(rates[name])
        print(
            f"{name:<14} {median:>9.0f} tok/s (min {min(rates[name]):.0f}, max {max(rates[name]):.0f})  "
            f"x{median / first:.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
