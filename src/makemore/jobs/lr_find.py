"""The learning-rate range test: Smith (2017), "Cyclical Learning Rates for Training Neural Networks", section 3.3,
as in fast.ai's `lr_find` and Karpathy's makemore part 2 (`lre = torch.linspace(-3, 0, 1000); lrs = 10**lre`).

From a fresh model, take `steps` optimizer steps with the learning rate growing exponentially from `min_lr` to
`max_lr`, and record each batch's loss. The steps are the trainer's own (`Trainer.train_step`: same optimizer,
weight decay, gradient clipping, penalty, autocast), only the learning rate differs. The sweep stops early once the
loss diverges (the smoothed loss exceeds `diverge` x its minimum, or a loss is not finite).

The suggestion (`suggest_lr`): smooth the losses with a centred moving average (no lag, unlike an exponential one),
find the learning rate where the smoothed loss is lowest -- Smith's "max_lr", the largest rate at which the loss
still falls -- and halve it, a margin because the floor of the valley sits close to the cliff where the loss blows
up. Measured on names (mlp, 3000 steps of warmup + cosine, val loss): the halved minimum landed at 2.5e-3 to 3.9e-3
(val 2.117 at 3e-3, 2.118 at 6e-3), where the older "steepest descent of the curve" rule said 6.1e-4 (val 2.190):
in a sweep the loss falls fastest while the model is still learning the easy things, not at the best rate.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from makemore import config as config_mod
from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.jobs.train_data import DataOptions, load_splits
from makemore.jobs.train_settings import fresh_configs, torch_threads, trainable_model_name
from makemore.models import LanguageModel, build_model
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

SAFETY_FACTOR = 2.0  # the suggestion is the lr at the smoothed minimum divided by this


@dataclass
class LRFindResult:
    lrs: list[float]  # the learning rate of each step taken
    losses: list[float]  # the batch loss of each step (mean NLL, nats/token)
    smoothed: list[float]  # centred moving average of `losses`
    suggestion: float  # the suggested learning rate
    suggestion_index: int  # its step
    min_lr: float  # the range asked for
    max_lr: float
    steps: int  # steps asked for; len(lrs) is smaller when the sweep stopped at divergence
    stopped: str  # "completed" or "diverged"


def lr_sweep(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """`steps` learning rates growing exponentially from min_lr to max_lr (both included)."""
    return np.geomspace(min_lr, max_lr, steps)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; near the ends the window shrinks to what exists (same length as `values`)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values.copy()
    half = window // 2
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    lo, hi = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)


def suggest_lr(lrs: np.ndarray, losses: np.ndarray, window: int | None = None) -> tuple[int, np.ndarray]:
    """Index of the suggested learning rate (half the one at the smoothed loss's minimum), and the smoothed curve."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    window = window or max(5, len(losses) // 20)
    smoothed = moving_average(losses, window)
    lowest = int(np.argmin(smoothed))
    target = lrs[lowest] / SAFETY_FACTOR
    return int(np.argmin(np.abs(np.log(lrs[: lowest + 1]) - np.log(target)))), smoothed


def find_lr(
    model: LanguageModel,
    train: LineSplit | Any,  # any training split the Trainer takes (line items, or a stream's windows)
    config: TrainConfig,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    steps: int = 300,
    diverge: float = 4.0,
) -> LRFindResult:
    """Run the range test on `model` (fresh; it is trained in place) with the optimizer settings of `config`."""
    if not model.trainable:
        raise MakemoreError("this model is fitted in closed form (no gradient descent), so it has no learning rate")
    if not 0 < min_lr < max_lr or not math.isfinite(max_lr):
        raise MakemoreError(f"the learning-rate range must satisfy 0 < min < max, got {min_lr:g} .. {max_lr:g}")
    if steps < 10:
        raise MakemoreError(f"the sweep needs at least 10 steps, got {steps}")
    # Constant schedule (the sweep sets every step's lr) and unbucketed batches: length-sorted batches make the
    # loss jump from batch to batch, which would blur the curve.
    sweep_config = config_mod.replace(
        config, schedule="constant", warmup_steps=0, bucket=False, diagnostics=False, tensorboard=False
    )
    lrs = lr_sweep(min_lr, max_lr, steps)
    taken: list[float] = []
    losses: list[float] = []
    stopped = "completed"
    with tempfile.TemporaryDirectory(prefix="makemore-lr-find-") as scratch:  # the trainer writes nothing here
        trainer = Trainer(model, {"train": train}, sweep_config, scratch)
        model.train()
        best, average = math.inf, 0.0
        for i, lr in enumerate(lrs):
            x, y = trainer.sampler.next()
            loss, _ = trainer.train_step(x, y, float(lr))
            value = loss.item()
            if not math.isfinite(value):
                stopped = "diverged"
                break
            taken.append(float(lr))
            losses.append(value)
            # Online divergence test on a bias-corrected exponential average (fast.ai's): cheap and robust to one
            # unlucky batch.
            average = 0.9 * average + 0.1 * value
            current = average / (1 - 0.9 ** (i + 1))
            best = min(best, current)
            if i >= 10 and current > diverge * best:
                stopped = "diverged"
                break
        trainer.observer.close()
    if len(losses) < 3:
        raise MakemoreError(f"the loss diverged within {len(losses)} steps: lower --min-lr")
    index, smoothed = suggest_lr(np.array(taken), np.array(losses))
    return LRFindResult(
        lrs=taken,
        losses=losses,
        smoothed=smoothed.tolist(),
        suggestion=taken[index],
        suggestion_index=index,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        stopped=stopped,
    )


def run_lr_find(
    model_name: str,
    model_config: Any,
    vocab: Vocab,
    train: LineSplit | Any,
    train_config: TrainConfig,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    steps: int = 300,
) -> LRFindResult:
    """Build a fresh model (seeded as training would) and sweep on the `train` split (line or stream), on
    `train_config.threads` CPU threads as training would use."""
    with torch_threads(train_config.threads):
        torch.manual_seed(train_config.seed)
        try:
            model = build_model(model_name, model_config, vocab.size)
        except ValueError as error:
            raise MakemoreError(f"--model {model_name}: {error}") from None
        if not model.trainable:
            raise MakemoreError(f"--model {model_name} is fitted in closed form: it has no learning rate to find")
        return find_lr(model, train, train_config, min_lr=min_lr, max_lr=max_lr, steps=steps)


def describe(result: LRFindResult) -> str:
    """The sweep in one line: its range, where the smoothed loss was lowest, and the suggestion."""
    ending = "stopped at divergence" if result.stopped == "diverged" else "no divergence"
    lowest = int(np.argmin(result.smoothed))
    return (
        f"lr-find: {len(result.lrs)} steps from {result.min_lr:.1e} to {result.lrs[-1]:.1e} ({ending}); "
        f"lowest smoothed loss {min(result.smoothed):.3f} at lr {result.lrs[lowest]:.1e}; "
        f"suggested lr {result.suggestion:.2e} (half the lr of the lowest smoothed loss)"
    )


def rounded_suggestion(result: LRFindResult) -> float:
    """The suggestion to three significant digits: what `train --lr auto` trains with."""
    return float(f"{result.suggestion:.3g}")


def sweep_file(
    input: str,
    model: str,
    split: str = "0.8,0.1,0.1",
    max_item_len: int = 256,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    steps: int = 300,
    **settings: Any,
) -> tuple[LRFindResult, dict[str, Any]]:
    """`makemore lr-find`: the range test on the train split of a line-mode file, with training and model settings
    by name (checked as `makemore.train` checks them). Returns the sweep and the data's provenance."""
    model = trainable_model_name(model)
    train_config, model_config, _ = fresh_configs(model, None, settings)
    options = DataOptions(input=input, split=split, max_item_len=max_item_len)
    options.check()
    splits, info = load_splits(options, train_config.seed, need_val=False)
    vocab = Vocab.from_texts([item for items in splits.values() for item in items])
    train = LineSplit(splits["train"], vocab)
    return run_lr_find(model, model_config, vocab, train, train_config, min_lr, max_lr, steps), info
