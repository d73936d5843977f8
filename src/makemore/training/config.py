"""What a training run is asked to do (`TrainConfig`, saved in run.json) and where it stands (`TrainState`, saved in
every checkpoint)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from makemore.config import check, field


def _limit(condition: bool, name: str, rule: str, value: object) -> None:
    """A failed check as the user typed it: `--lr must be > 0, got -1` (the flag, not the field)."""
    check(condition, f"--{name.replace('_', '-')} must be {rule}, got {value}")


@dataclass
class TrainConfig:
    max_steps: int = field(5000, "number of optimizer steps")
    time_budget: float | None = field(
        None,
        "stop after this many seconds of training, the final val evaluation included (none: no limit; --max-steps "
        "given without --time-budget turns a recommended budget off); the schedule's length in steps is estimated "
        "from the warmup's speed, once, printed and recorded (schedule_steps in the checkpoint and the result)",
    )
    batch_size: int = field(32, "items per batch (line mode); under torchrun the global batch, split across ranks")
    batch_per_rank: bool = field(False, "under torchrun: --batch-size is per rank (global batch = batch size x ranks)")
    optimizer: str = field("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = field(3e-3, "peak learning rate (makemore train --lr auto: run lr-find first, use its suggestion)")
    momentum: float = field(0.9, "SGD momentum")
    weight_decay: float = field(0.01, "decoupled weight decay, applied to matrices only (not biases, norms)")
    schedule: str = field("cosine", "learning-rate schedule after warmup", choices=("cosine", "step", "constant"))
    warmup_steps: int = field(100, "linear warmup steps")
    min_lr_ratio: float = field(0.1, "cosine: final lr as a fraction of lr; step: the factor of the drop")
    step_decay_at: float = field(0.5, "step schedule: fraction of max_steps at which lr drops")
    grad_clip: float = field(1.0, "clip the gradient norm to this (0: off)")
    eval_every: int = field(500, "evaluate on the whole val split (and checkpoint) every N steps")
    eval_batch_size: int = field(1024, "items per batch when evaluating")
    patience: int = field(0, "early stopping: stop after N evaluations without val improvement (0: off)")
    bucket: bool = field(True, "group training items of similar length into batches (less padding)")
    pack: bool = field(
        True, "models that restart at item boundaries (packable) read several items per row: batch_size rows"
    )
    pack_width: int = field(
        0,
        "slots per packed row (0: the longest item's length); a batch keeps its batch_size x longest-item slots "
        "in fewer, wider rows, which fill better (names: 93.5 percent of the slots in rows of 16, 99.8 in rows of 32)",
    )
    seed: int = field(1337, "seed for the data split, initialisation, batches and sampling")
    device: str = field("auto", "cpu, cuda, mps, or auto (cuda, then mps, then cpu)")
    dtype: str = field("fp32", "autocast dtype (fp16 adds a gradient scaler)", choices=("fp32", "bf16", "fp16"))
    compile: bool = field(
        False, "torch.compile the training forward pass (first steps slower while it compiles; eager if it fails)"
    )
    threads: int = field(
        1,
        "CPU threads for PyTorch, set once for the whole run (0: PyTorch's default, one per core). 1 by default: "
        "a small model's step is many tiny ops, and while another process takes a core every parallel op waits "
        "for a descheduled thread (transformer, 2 busy cores: 44 ms a step on 1 thread, 900 ms on 2)",
    )
    row_shards: int = field(
        1,
        "CPU, models whose rows are independent: train each batch as this many shards of rows on as many threads "
        "(one intra-op thread each; dropout per shard, so the numbers depend on it); 1: off",
    )
    log_every: int = field(100, "log the training loss every N steps")
    skip_nonfinite: bool = field(
        False, "skip an update whose loss or gradient is NaN/inf instead of stopping (stops after 20 in a row)"
    )
    diagnostics: bool = field(False, "record activation/gradient/update statistics at log steps (diagnostics.jsonl)")
    tensorboard: bool = field(False, "write TensorBoard events to RUN/tensorboard (needs makemore[tensorboard])")
    ema: float = field(
        0.0, "evaluate, keep and sample an exponential moving average of the weights with this decay (0: off)"
    )

    def __post_init__(self):
        _limit(self.max_steps >= 1, "max_steps", ">= 1", self.max_steps)
        _limit(self.time_budget is None or self.time_budget > 0, "time_budget", "> 0 seconds", self.time_budget)
        _limit(1 <= self.batch_size <= 1 << 16, "batch_size", f"in 1..{1 << 16}", self.batch_size)
        _limit(self.lr > 0, "lr", "> 0", self.lr)
        _limit(self.momentum >= 0, "momentum", ">= 0", self.momentum)
        _limit(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _limit(self.grad_clip >= 0, "grad_clip", ">= 0", self.grad_clip)
        _limit(self.warmup_steps >= 0, "warmup_steps", ">= 0", self.warmup_steps)
        _limit(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        _limit(0 <= self.step_decay_at <= 1, "step_decay_at", "in [0, 1]", self.step_decay_at)
        _limit(self.eval_every >= 1, "eval_every", ">= 1", self.eval_every)
        _limit(self.log_every >= 1, "log_every", ">= 1", self.log_every)
        # upper limits: a typo such as an extra zero should fail here, not exhaust memory half an hour later
        _limit(1 <= self.eval_batch_size <= 1 << 20, "eval_batch_size", f"in 1..{1 << 20}", self.eval_batch_size)
        _limit(self.patience >= 0, "patience", ">= 0", self.patience)
        _limit(0 <= self.threads <= 1024, "threads", "in 0..1024", self.threads)
        _limit(1 <= self.row_shards <= 256, "row_shards", "in 1..256", self.row_shards)
        _limit(0 <= self.pack_width <= 1 << 16, "pack_width", f"in 0..{1 << 16}", self.pack_width)
        _limit(0 <= self.ema < 1, "ema", "in [0, 1)", self.ema)
        _limit(0 <= self.seed < 1 << 63, "seed", "in 0..2**63-1", self.seed)


@dataclass
class TrainState:
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    elapsed: float = 0.0  # seconds of training before this process (resume)
    evals_without_improvement: int = 0
    # the log window open at the checkpoint (sum of losses, steps, tokens): a resumed run logs the same averages
    window_loss: float = 0.0
    window_steps: int = 0
    window_tokens: int = 0
    # the learning-rate schedule's length in steps: max_steps, or (--time-budget) the estimate fixed once after the
    # first steps; 0 until then. A resumed run continues the same schedule.
    schedule_steps: int = 0
    # (--time-budget) seconds one val evaluation took when the length was fixed: training stops that long before
    # the budget, so that the final evaluation ends within it. 0: not timed (no budget, or an older checkpoint).
    final_eval_seconds: float = 0.0

    def __post_init__(self):  # checked when a checkpoint is read back
        check(self.step >= 0 and self.best_step >= -1, "step must be >= 0 and best_step >= -1")
        check(self.elapsed >= 0 and self.evals_without_improvement >= 0, "elapsed and evaluation count must be >= 0")
        check(self.schedule_steps >= 0, f"schedule_steps must be >= 0, got {self.schedule_steps}")
        check(self.final_eval_seconds >= 0, f"final_eval_seconds must be >= 0, got {self.final_eval_seconds}")
