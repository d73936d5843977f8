"""Training throughput of the real trainer: useful (non-padding) and padded tokens per second, per model.

    python benchmarks/throughput.py --model transformer --n-layer 4 --n-head 4 --n-embd 64 --batch-size 32 --seconds 30
    python benchmarks/throughput.py --model transformer,gru --grid --seconds 20     # fp32/bf16 x eager/compiled
    torchrun --nproc_per_node 2 benchmarks/throughput.py --threads 1 ...             # DDP: one process per core

Each run builds the model with its registry defaults (plus any model flags given), trains it through
`train.Trainer` with the model's recommended training settings for `--seconds` after a warm-up, and times the steps
between batch draws (the end-of-run evaluation and checkpoint are not timed). The last line printed is one JSON
object for the last run: {"model", "useful_tokens_per_s", "padded_tokens_per_s", "steps", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from makemore import config as config_mod
from makemore.data.lines import IGNORE, LineSplit, Vocab, read_items
from makemore.models import MODELS, build_model
from makemore.training import distributed
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_data(train: str | None, val: str | None) -> tuple[dict[str, list[str]], Vocab]:
    train = train or (str(SHARED / "names-train.txt") if (SHARED / "names-train.txt").exists() else "first-names")
    items, _ = read_items(train)
    val_items = read_items(val)[0] if val else items[:512]
    vocab = Vocab.from_texts(items + val_items)
    return {"train": items, "val": val_items[:512]}, vocab


def measure(name: str, model_config, splits, vocab, train_config: TrainConfig, seconds: float, warmup: float) -> dict:
    torch.manual_seed(train_config.seed)
    model = build_model(name, model_config, vocab.size)
    tensors = {split: LineSplit(items, vocab) for split, items in splits.items()}
    with tempfile.TemporaryDirectory() as run_dir:
        config = config_mod.replace(
            train_config, max_steps=10**9, time_budget=warmup + seconds, eval_every=10**9, log_every=10**9
        )
        trainer = Trainer(model, tensors, config, run_dir)
        times: list[float] = []
        cpu: list[float] = []  # process CPU time: with one thread, what the step costs on a quiet machine
        useful: list[int] = []
        padded: list[int] = []
        draw = trainer.sampler.next

        def timed_next():  # a batch is drawn at the start of every step: the gaps between draws are step times
            times.append(time.perf_counter())
            cpu.append(time.process_time())
            x, y = draw()
            useful.append(int((y != IGNORE).sum()))
            padded.append(y.numel())
            return x, y

        trainer.sampler.next = timed_next
        result = trainer.train()
    start = next((i for i, t in enumerate(times) if t - times[0] >= warmup), len(times) - 1)
    end = len(times) - 1  # the last drawn step has no following draw: not timed
    wall = times[end] - times[start] if end > start else float("nan")
    cpu_s = cpu[end] - cpu[start] if end > start else float("nan")
    steps = end - start
    return {
        "model": name,
        "dtype": train_config.dtype,
        "compile": train_config.compile,
        "threads": trainer.threads,  # intra-op threads (with row shards: one per shard while training)
        "row_shards": train_config.row_shards if trainer.splitter is not None else 1,
        "packed": type(trainer.sampler).__name__ == "PackedSampler",
        "batch_size": train_config.batch_size,
        "params": model.parameter_count(),
        "useful_tokens_per_s": round(sum(useful[start:end]) / wall, 1),
        "padded_tokens_per_s": round(sum(padded[start:end]) / wall, 1),
        "steps": steps,
        "ms_per_step": round(1000 * wall / max(steps, 1), 3),
        "useful_tokens_per_cpu_s": round(sum(useful[start:end]) / cpu_s, 1),
        "cpu_ms_per_step": round(1000 * cpu_s / max(steps, 1), 3),
        "val_loss_end": round(float(result.get("best_val", float("nan"))), 4),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="transformer")
    known, _ = pre.parse_known_args(argv)
    names = (
        known.model.split(",") if known.model != "all" else [n for n, s in MODELS.items() if s.model_class.trainable]
    )
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="transformer", help="a model, a comma-separated list, or 'all'")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per run (after warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds first (compilation, caches)")
    parser.add_argument("--batch-size", type=int, help="items per batch (default: the model's recommendation)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="autocast dtype (default: the model's)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    parser.add_argument("--threads", type=int, help="torch threads (default: the model's recommendation)")
    parser.add_argument("--row-shards", type=int, help="a batch's rows as this many shards on as many threads")
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None, help="packed rows (packable)")
    parser.add_argument("--grid", action="store_true", help="every combination of fp32/bf16 and eager/compiled")
    parser.add_argument("--train", help="training items (default: ../shared/data/names-train.txt or first-names)")
    parser.add_argument("--val", help="val items (evaluated once at the end, not timed)")
    if len(names) == 1:
        config_mod.add_flags(parser.add_argument_group(f"model {names[0]!r}"), MODELS[names[0]].config_class)
    args = parser.parse_args(argv)
    # under torchrun (e.g. --nproc_per_node 2 on a 2-core CPU: one process per core, Gloo): the trainer's DDP path;
    # every rank draws the same global batch, so the token counts below are the global ones; rank 0 reports
    info = distributed.setup(torch.device("cpu"))
    if not info.is_main:
        sys.stdout = open(os.devnull, "w")
    splits, vocab = load_data(args.train, args.val)

    results = []
    for name in names:
        spec = MODELS[name]
        model_config = config_mod.from_namespace(spec.config_class, args)
        base = config_mod.replace(TrainConfig(), **spec.train_defaults)
        overrides = {
            k: getattr(args, k)
            for k in ("batch_size", "dtype", "threads", "row_shards", "pack")
            if getattr(args, k) is not None
        }
        if args.compile is not None:
            overrides["compile"] = args.compile
        base = config_mod.replace(base, **overrides)
        variants = [base]
        if args.grid:
            variants = [config_mod.replace(base, dtype=d, compile=c) for c in (False, True) for d in ("fp32", "bf16")]
        for train_config in variants:
            try:
                result = measure(name, model_config, splits, vocab, train_config, args.seconds, args.warmup)
            except Exception as error:  # e.g. torch.compile without a working C++ toolchain
                result = {
                    "model": name,
                    "dtype": train_config.dtype,
                    "compile": train_config.compile,
                    "error": str(error),
                }
            results.append(result)
            print(
                f"{name:<12} {train_config.dtype:<5} {'compiled' if train_config.compile else 'eager':<9}"
                f" threads {result.get('threads', '-')}: "
                f"{result.get('useful_tokens_per_s', float('nan')):>9.0f} useful tok/s "
                f"{result.get('padded_tokens_per_s', float('nan')):>9.0f} padded tok/s "
                f"{result.get('ms_per_step', float('nan')):>7.2f} ms/step | per CPU-second: "
                f"{result.get('useful_tokens_per_cpu_s', float('nan')):>9.0f} useful tok/s "
                f"{result.get('cpu_ms_per_step', float('nan')):>7.2f} ms/step  {result.get('error', '')}",
                flush=True,
            )
    last = results[-1]
    print(json.dumps({k: last.get(k) for k in ("model", "useful_tokens_per_s", "padded_tokens_per_s", "steps")}))


if __name__ == "__main__":
    main()
