"""The trainer: fits any model through the one interface, evaluates on whole splits, checkpoints for exact resume.

It knows no model by name: count models are fitted in closed form because they say `trainable = False`.
It prints nothing: progress goes to an `on_event` callback (the CLI draws a progress bar from it).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from makemore import config as config_mod
from makemore.config import check, field
from makemore.data.lines import IGNORE, LengthBucketSampler, LineSplit, PackedSampler
from makemore.errors import MakemoreError
from makemore.models import LanguageModel
from makemore.models.base import detach_state, map_state
from makemore.runs import checkpoint as ckpt
from makemore.training import distributed, optimizer_state
from makemore.training.diagnostics import DIAGNOSTICS_FILE, TENSORBOARD_HINT, Observer, grad_norm_of
from makemore.training.optim import FlatAdamW, FlatLayout, views
from makemore.training.row_split import RowSplitter


@dataclass
class TrainConfig:
    max_steps: int = field(5000, "number of optimizer steps")
    time_budget: float | None = field(None, "stop after this many seconds of training (None: no limit)")
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
    threads: int = field(0, "CPU threads for PyTorch (0: auto, timing 1 thread against all cores now and then)")
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
        check(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        check(self.time_budget is None or self.time_budget > 0, "time_budget must be > 0 seconds")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        check(0 <= self.step_decay_at <= 1, "step_decay_at must be in [0, 1]")
        check(
            self.eval_every >= 1 and self.eval_batch_size >= 1 and self.log_every >= 1,
            "eval_every, eval_batch_size and log_every must be >= 1",
        )
        check(self.patience >= 0 and self.threads >= 0, "patience and threads must be >= 0")
        check(0 <= self.pack_width <= 1 << 16, f"pack_width must be in 0..{1 << 16}, got {self.pack_width}")
        check(0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}")
        # upper limits: a typo such as an extra zero should fail here, not exhaust memory half an hour later
        check(self.batch_size <= 1 << 16, f"batch_size must be <= {1 << 16}, got {self.batch_size}")
        check(self.eval_batch_size <= 1 << 20, f"eval_batch_size must be <= {1 << 20}, got {self.eval_batch_size}")
        check(self.threads <= 1024, f"threads must be <= 1024, got {self.threads}")
        check(0 <= self.seed < 1 << 63, f"seed must be in 0..2**63-1, got {self.seed}")


MAX_NONFINITE_IN_A_ROW = 20  # --skip-nonfinite gives up after this many skipped updates in a row


def finite_norm(norm: torch.Tensor | float | None) -> bool:
    """False for a NaN/inf gradient norm; None (not computed) counts as fine."""
    return norm is None or math.isfinite(float(norm))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MakemoreError(f"--device: unknown device {name!r} (cpu, cuda, mps or auto)") from None
    if device.type not in ("cpu", "cuda", "mps"):  # e.g. "meta" parses, but holds no data to train on
        raise MakemoreError(f"--device: unsupported device {name!r} (cpu, cuda, mps or auto)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MakemoreError("--device cuda: no CUDA GPU is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MakemoreError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPUs here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MakemoreError("--device mps: no Apple GPU is available here")
    if device.type == "cpu" and device.index not in (None, 0):
        raise MakemoreError(f"--device {name}: the CPU is device cpu")
    return device


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception as one short line (compiler errors can run to pages)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_grad_scaler(device: torch.device, dtype: str) -> Any:
    """A GradScaler for fp16 (its narrow range underflows small gradients); None for fp32 and bf16.

    torch.amp.GradScaler also runs on CPU, so the fp16 path (scale, unscale before clipping, skipped steps) is the
    same code on every device and the CPU tests reach it.
    """
    if dtype != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, RuntimeError, TypeError):  # older PyTorch: CUDA-only scaler
        return torch.cuda.amp.GradScaler() if device.type == "cuda" else None


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    dtype: str = "fp32",
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> dict[str, float]:
    """Exact mean NLL (nats per predicted token) over every batch given, plus bits/char and perplexity.

    `reduce` combines the (NLL sum, token count) of several processes that each evaluated a share of the batches
    (distributed.all_reduce_sum), so the mean is over the whole split.
    """
    device = device or model.device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Stream evaluation of recurrent models: consecutive batches continue the same streams, so the state carries.
    carry, state = getattr(batches, "carry_state", False), None
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            if carry:
                logits, _, state = model.forward_with_state(x, None, state)
            else:
                logits, _ = model(x)
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((y != IGNORE).sum())
    model.train(was_training)
    if reduce is not None:
        total, count = reduce([total, count])
        count = int(count)
    nll = total / max(count, 1)
    return {"nll": nll, "bpc": nll / math.log(2), "ppl": math.exp(min(nll, 700)), "tokens": count}


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """1) linear warmup; 2) then cosine to min_lr_ratio * lr, a step drop, or constant. progress in [0, 1]."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.lr * ratio
    if config.schedule == "step" and progress >= config.step_decay_at:
        return config.lr * config.min_lr_ratio
    return config.lr


class OtherLoad:
    """How many cores' worth of CPU time other processes took between two looks: busy time from /proc/stat (Linux)
    less this process's own. `available` is False where /proc/stat cannot be read."""

    MIN_INTERVAL = 0.5  # seconds: shorter intervals hold too few clock ticks to tell

    def __init__(self):
        self.last = self.sample()
        self.available = self.last is not None

    @staticmethod
    def sample() -> tuple[float, float, float] | None:
        """(clock time, CPU seconds all processes were busy, CPU seconds of this process)."""
        try:
            with open("/proc/stat") as stat:
                ticks = [int(field) for field in stat.readline().split()[1:9]]
            per_second = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait (steal counts: a core taken away)
        own = sum(os.times()[:2])  # user + system time of this process, all its threads
        return time.perf_counter(), busy / per_second, own

    def others(self) -> float | None:
        now = self.sample() if self.available else None
        if now is None or self.last is None or now[0] - self.last[0] < self.MIN_INTERVAL:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        self.last = now
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


class ThreadChooser:
    """`--threads 0` on a CPU: choose between one thread and all cores by timing, and look again later.

    Small models' steps are many tiny ops. Two OpenMP threads can help on an idle machine, but when another process
    keeps a core busy every parallel op waits for a descheduled thread, and a step takes 10x longer (measured
    here: 90 ms vs 1 s). So: while the load average says another process takes a core, use one thread; otherwise time
    `probe` steps with one thread, then with all cores (stopping as soon as they are behind), and keep the faster.
    Look again after `every` steps, twice as long each time the choice holds.

    With `split` (models whose rows are independent) there is a third candidate: one thread per core, each training
    a shard of the batch's rows (`RowSplitter`) with one intra-op thread. Which wins depends on the model: at
    makemore's 64-wide Transformer the shards (25k vs ~20k tokens/s), at the 128-wide default the intra-op threads
    (14.5k vs 12.4k). `active` is how many threads train now, `splitting` whether as shards.
    """

    def __init__(self, enabled: bool, probe: int = 8, every: int = 500, split: bool = False):
        self.cores = torch.get_num_threads()
        self.enabled = enabled and self.cores > 1
        self.modes = [(1, False), (self.cores, False)] + ([(self.cores, True)] if split else [])  # (threads, split)
        self.probe, self.first_wait, self.wait = probe, every, every
        self.chosen, self.chosen_mode, self.active, self.splitting = 1, 0, 1, False
        self.meter = OtherLoad()
        self.next_trial, self.trial, self.times, self.started = 0, -1, [0.0] * len(self.modes), 0.0
        if self.enabled:
            torch.set_num_threads(1)

    def busy(self) -> bool:
        """Whether another process keeps a core busy. Where /proc/stat tells: the CPU time all processes took since
        the last look, less this process's own (an interval too short to tell: not busy, the timed trial decides).
        Elsewhere: the load average less this process's part, about one per thread it trains with. (The load
        average lags by a minute: a run started right after another saw that one's load as a stranger's.)"""
        others = self.meter.others()
        if others is not None or self.meter.available:
            return others is not None and others > 0.5
        try:
            return os.getloadavg()[0] - self.chosen > 0.5
        except OSError:  # no load average on this platform: time it
            return False

    def before_step(self, step: int) -> None:
        if not self.enabled:
            return
        if self.trial < 0 and step >= self.next_trial:
            if self.busy():
                self.decide(step, 0)
                return
            self.trial, self.times = 0, [0.0] * len(self.modes)
        if self.trial >= 0:
            self.use(*self.modes[self.trial // self.probe])
            self.started = time.perf_counter()

    def after_step(self, step: int) -> None:
        if self.trial < 0:
            return
        mode = self.trial // self.probe
        if self.trial % self.probe:  # the first step after a switch wakes the thread pool: not timed
            self.times[mode] += time.perf_counter() - self.started
        self.trial += 1
        if mode > 0 and self.times[mode] > min(self.times[:mode]):  # behind a finished candidate: next one
            self.times[mode], self.trial = math.inf, (mode + 1) * self.probe
        if self.trial >= self.probe * len(self.modes):
            self.decide(step, min(range(len(self.modes)), key=self.times.__getitem__))

    def decide(self, step: int, mode: int) -> None:
        self.wait = self.wait * 2 if mode == self.chosen_mode else self.first_wait
        self.chosen_mode, self.next_trial, self.trial = mode, step + self.wait, -1
        self.chosen = self.modes[mode][0]
        self.use(*self.modes[mode])

    def use(self, threads: int, split: bool = False) -> None:
        self.active, self.splitting = threads, split
        torch.set_num_threads(1 if split else threads)


def build_optimizer(model: LanguageModel, config: TrainConfig, flat: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW as configured; `flat`: AdamW over flat buffers (`optim.FlatAdamW`, which takes over the
    parameters' storage), for single-process eager training without a gradient scaler."""
    # Weight decay on matrices and embeddings only: decaying biases and norm gains only hurts (nanoGPT).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if flat:
        try:
            return FlatAdamW(groups, lr=config.lr, betas=(0.9, 0.99))
        except (RuntimeError, TypeError, ValueError):  # no fused CPU kernel in this PyTorch, or mixed tensors
            pass
    try:  # the fused kernel is one call per step instead of a Python loop over parameters
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


class WeightAverage:
    """An exponential moving average of the parameters (Polyak averaging; e.g. Izmailov et al. 2018 on why an
    average of the weights along the last stretch of training generalises better than its end point). Training
    updates the weights themselves; evaluation, the best checkpoint and so sampling see the average. The decay
    ramps up as (1 + step) / (10 + step) so early averages do not remember the random initialisation."""

    def __init__(self, model: LanguageModel, decay: float, layout: FlatLayout | None = None):
        """`layout`: the flat buffers holding the model's parameters as views (`optim.FlatAdamW.layout()`); the
        average then lives in buffers of the same layout, and an update is one operation per buffer."""
        self.decay = decay
        self.params = list(model.parameters())  # tied weights appear once
        if layout is not None and sorted(id(p) for _, ps in layout for p in ps) != sorted(map(id, self.params)):
            layout = None  # (some parameters are not in the buffers: average them one by one)
        if layout is None:
            self.weights = [p.detach() for p in self.params]  # what is averaged: per buffer, or per parameter
            self.averaged = [w.clone() for w in self.weights]
            self.average = self.averaged  # per parameter, in model order (the state dict's layout)
            return
        self.weights = [buffer.detach() for buffer, _ in layout]
        self.averaged = [w.clone() for w in self.weights]
        view_of = {id(p): view for average, (_, ps) in zip(self.averaged, layout) for p, view in views(average, ps)}
        self.average = [view_of[id(p)] for p in self.params]

    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.averaged, self.weights, 1 - decay)

    @contextlib.contextmanager
    def applied(self):
        """The average in the model's parameters for the duration, the trained weights back after."""
        trained = [w.clone() for w in self.weights]
        with torch.no_grad():
            torch._foreach_copy_(self.weights, self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.weights, trained)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): t for i, t in enumerate(self.average)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if len(tensors) != len(self.average):
            raise ValueError(f"{len(tensors)} averaged tensors for {len(self.average)} parameters")
        for i, t in enumerate(self.average):
            t.copy_(tensors[str(i)])


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

    def __post_init__(self):  # checked when a checkpoint is read back
        check(self.step >= 0 and self.best_step >= -1, "step must be >= 0 and best_step >= -1")
        check(self.elapsed >= 0 and self.evals_without_improvement >= 0, "elapsed and evaluation count must be >= 0")


class Trainer:
    def __init__(
        self,
        model: LanguageModel,
        splits: dict[str, LineSplit],
        config: TrainConfig,
        run_dir: str | Path,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.config = config
        self.dist = distributed.current()  # rank and world size under torchrun; a single process otherwise
        self.device = distributed.local_device(resolve_device(config.device), self.dist)
        self.model = model.to(self.device)
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.state = TrainState()
        self.checkpoint_step: int | None = None  # step of the last checkpoint written or restored
        self.skipped_step, self.skipped_steps, self.nonfinite_streak = False, 0, 0  # --skip-nonfinite bookkeeping
        self.scaler = make_grad_scaler(self.device, config.dtype) if model.trainable else None
        flat = not self.dist.enabled and not config.compile and self.scaler is None  # (DDP, compile: untried)
        self.optimizer = build_optimizer(model, config, flat) if model.trainable else None
        # where the optimizer keeps parameters and gradients in flat buffers: clipping, the weight average and the
        # row shards' gradient sum work on those (two tensors) instead of ~50 parameters
        self.layout = self.optimizer.layout() if isinstance(self.optimizer, FlatAdamW) else None
        self.gradient_holders = [b for b, _ in self.layout] if self.layout else list(model.parameters())
        self.average = WeightAverage(model, config.ema, self.layout) if config.ema > 0 and model.trainable else None
        self.warnings: list[str] = []  # also sent as "warning" events; these lists those from before on_event was set
        self.eager_forward, self.train_forward = self.wrap_for_training()
        # Every rank draws the same global batch from the same seeded sampler and keeps its slice of rows, so the
        # sampler state is the same everywhere and a run resumes with any number of ranks.
        self.global_batch = config.batch_size * (self.dist.world_size if config.batch_per_rank else 1)
        if self.global_batch < self.dist.world_size:
            raise MakemoreError(
                f"--batch-size {config.batch_size} is smaller than the {self.dist.world_size} ranks: "
                "every rank needs at least one item per batch"
            )
        make_sampler = getattr(splits["train"], "make_sampler", None)  # stream mode: random windows or streams
        if make_sampler is not None:
            self.sampler = make_sampler(self.global_batch, config.seed)
        elif config.pack and model.packable:  # rows of several items, the model restarting at each: ~no padding
            self.sampler = PackedSampler(splits["train"], self.global_batch, config.seed, width=config.pack_width)
        else:
            self.sampler = LengthBucketSampler(splits["train"], self.global_batch, config.seed, bucket=config.bucket)
        # A sampler that carries state (stream mode, --stateful) feeds consecutive windows of the same streams: the
        # model continues from the state after the previous batch, detached (truncated BPTT).
        self.carry_state = getattr(self.sampler, "carries_state", False) and model.carries_state
        if self.carry_state and self.dist.world_size > 1:
            raise MakemoreError("--stateful training runs in one process (its streams cannot be split across ranks)")
        # --diagnostics (forward hooks, only on logged steps) and --tensorboard; a no-op when both are off
        self.observer = Observer(model, self.optimizer, self.run_dir, config.diagnostics, config.tensorboard, IGNORE)
        auto_threads = config.threads == 0 and self.device.type == "cpu" and not self.dist.enabled
        splitter = auto_threads and self.can_split_rows()
        self.splitter = RowSplitter(model, config.seed, self.layout) if splitter else None
        self.thread_chooser = ThreadChooser(auto_threads and model.trainable, split=self.splitter is not None)
        if config.tensorboard and not self.observer.want_tensorboard:
            self.warn(TENSORBOARD_HINT)

    # ------------------------------------------------------------------------------------ devices and processes
    def warn(self, message: str) -> None:
        """A one-line warning for the CLI to show (the trainer prints nothing); rank 0 speaks for all."""
        if self.dist.is_main:
            self.warnings.append(message)
            self.on_event({"event": "warning", "message": message})

    def wrap_for_training(self) -> tuple[Any, Any]:
        """(eager, training) forward callables: the model, inside DDP under torchrun, then torch.compile'd.

        Checkpoints, evaluation and sampling always use `self.model` itself, so no `module.` / `_orig_mod.`
        prefix reaches a saved state_dict and runs move freely between single- and multi-process training.
        """
        forward: Any = self.model
        if not self.model.trainable:
            return forward, forward
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=device_ids)
        if not self.config.compile:
            return forward, forward
        try:  # compile the DDP wrapper, as PyTorch recommends: it then splits graphs at gradient-bucket boundaries
            return forward, torch.compile(forward, dynamic=True)
        except Exception as error:  # any failure to compile means: train eagerly, and say so
            self.warn(f"--compile: torch.compile is unavailable ({first_line(error)}); training without it")
            return forward, forward

    def can_split_rows(self) -> bool:
        """Whether a batch's rows may train as shards on several CPU threads at once (see `row_split`)."""
        return (
            self.model.trainable
            and self.model.rows_independent
            and self.device.type == "cpu"
            and not self.dist.enabled  # under torchrun each rank is one such thread already
            and not self.carry_state
            and not self.config.compile
            and self.scaler is None
            and torch.get_num_threads() > 1
        )

    def fall_back_to_eager(self, error: Exception) -> None:
        self.warn(f"--compile: compiling the model failed ({first_line(error)}); training without it")
        self.train_forward = self.eager_forward

    def shard(
        self, x: torch.Tensor, y: torch.Tensor, batch_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """This rank's rows of a global batch, and its share of the batch's predicted tokens (None: one process)."""
        if not self.dist.enabled:
            return x, y, None
        rows = distributed.shard_rows(len(x), self.dist)
        x, y = x[rows], y[rows]
        return x, y, int((y != IGNORE).sum()) / batch_tokens

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta: dict[str, Any] = {"state": vars(self.state).copy()}
        if self.optimizer is not None:
            opt_tensors, meta["optimizer"] = optimizer_state.flatten_optimizer(self.optimizer.state_dict())
            tensors.update(opt_tensors)
        if self.scaler is not None:  # fp16: the loss scale found so far (plain numbers)
            meta["grad_scaler"] = self.scaler.state_dict()
        if self.average is not None:
            tensors.update({f"ema.{k}": v for k, v in self.average.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors.update({f"sampler.{k}": v for k, v in self.sampler.state_dict().items()})
        # One file: the JSON state rides in the safetensors header, so one atomic rename replaces the weights and
        # the step they belong to together. (Two files could be left one save apart by a kill between them.)
        path = self.run_dir / ckpt.CHECKPOINT_FILE
        self.write(ckpt.save_tensors, path, tensors, {ckpt.CHECKPOINT_METADATA_KEY: json.dumps(meta)})
        (self.run_dir / ckpt.CHECKPOINT_META).unlink(missing_ok=True)  # an older run's separate JSON, now stale
        self.checkpoint_step = self.state.step

    def write(self, writer: Callable[..., None], path: Path, *args: Any) -> None:
        """Run a file writer; a full disk or a read-only run directory stops training with one clear line."""
        if not self.dist.is_main:  # one writer per run directory: rank 0
            return
        try:
            writer(path, *args)
        except OSError as error:
            last = (
                "no checkpoint was saved yet"
                if self.checkpoint_step is None
                else (
                    f"the last checkpoint (step {self.checkpoint_step}) is intact; continue with "
                    f"makemore train --resume {self.run_dir}"
                )
            )
            raise MakemoreError(
                f"{path}: cannot write ({error.strerror or error}): training stopped at step {self.state.step}; {last}"
            ) from None

    def handle_nonfinite(self, loss: float, grad_norm: torch.Tensor | None) -> None:
        """A NaN/inf loss or gradient at this step: stop with a message naming the step (the run's files are as the
        last evaluation left them), or with --skip-nonfinite count the skipped update and go on."""
        step = self.state.step
        what = (
            f"the training loss became {loss}"
            if not math.isfinite(loss)
            else f"the gradient norm became {float(grad_norm)}"
        )
        if not self.config.skip_nonfinite:
            raise MakemoreError(
                f"{what} at step {step}: lower --lr, or pass --skip-nonfinite to skip such steps "
                "(the best checkpoint is untouched)"
            )
        self.skipped_steps += 1
        self.nonfinite_streak += 1
        self.on_event({"event": "warning", "message": f"{what} at step {step}: update skipped (--skip-nonfinite)"})
        if self.nonfinite_streak >= MAX_NONFINITE_IN_A_ROW:
            raise MakemoreError(
                f"{what} at step {step}, {self.nonfinite_streak} steps in a row: stopping; lower --lr "
                "(the best checkpoint is untouched)"
            )

    def restore(self) -> bool:
        """Continue from the run's checkpoint: weights, optimizer, RNG and sampler state, so the rest of the run is
        what it would have been without the stop. Log lines written after that checkpoint are dropped.

        Returns False when the run has no checkpoint yet (stopped before its first one): training starts over.
        """
        where = self.run_dir / ckpt.CHECKPOINT_FILE
        legacy = self.run_dir / ckpt.CHECKPOINT_META
        if not where.exists() and not legacy.exists():
            if self.dist.is_main:
                for log in (ckpt.METRICS_FILE, DIAGNOSTICS_FILE):
                    ckpt.truncate_metrics(self.run_dir / log, 0)
            return False
        tensors, header = ckpt.load_tensors_with_metadata(where)
        try:
            if ckpt.CHECKPOINT_METADATA_KEY in header:
                meta = json.loads(header[ckpt.CHECKPOINT_METADATA_KEY])
            else:  # an older run: the JSON beside the weights, matched to them by a step tensor
                meta = ckpt.read_json(legacy)
                if int(tensors["meta.step"]) != meta["state"]["checkpoint_step"]:
                    raise MakemoreError(f"{where}: does not match {ckpt.CHECKPOINT_META} (interrupted save?)")
            state = {k: v for k, v in meta["state"].items() if k != "checkpoint_step"}
            self.state = config_mod.from_dict(TrainState, state, f"{where}: state", finite=False)
            model_tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
            ckpt.load_weights(self.model, where, model_tensors)
            if self.optimizer is not None:
                self.optimizer.load_state_dict(
                    optimizer_state.unflatten_optimizer(tensors, meta["optimizer"], self.optimizer, str(where))
                )
            if self.average is not None:
                self.average.load_state_dict({k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")})
            if self.scaler is not None and "grad_scaler" in meta:
                self.scaler.load_state_dict(meta["grad_scaler"])
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
            self.sampler.load_state_dict(
                {k[len("sampler.") :]: v for k, v in tensors.items() if k.startswith("sampler.")}
            )
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, RecursionError) as error:
            raise MakemoreError(f"{where}: cannot resume from this checkpoint ({error!r})") from None
        self.checkpoint_step = self.state.step
        if self.dist.is_main:
            for log in (ckpt.METRICS_FILE, DIAGNOSTICS_FILE):
                ckpt.truncate_metrics(self.run_dir / log, self.state.step)
        return True

    def save_best(self) -> None:
        if not self.dist.is_main:
            return
        self.write(ckpt.save_tensors, self.run_dir / ckpt.WEIGHTS_FILE, self.model.state_dict())

    # ----------------------------------------------------------------------------------------------- training
    def evaluate(self, split: str) -> dict[str, float]:
        batches = self.splits[split].eval_batches(self.config.eval_batch_size)
        if not self.dist.enabled or getattr(batches, "carry_state", False):  # streams carry state: one rank, in order
            with self.eval_threads():
                return evaluate(self.model, batches, self.device, self.config.dtype)
        # Each rank evaluates every world_size-th batch with the plain model (a DDP forward would expect all ranks
        # to take the same number of steps); the NLL sums and token counts are then added up over ranks.
        mine = itertools.islice(batches, self.dist.rank, None, self.dist.world_size)
        return evaluate(self.model, mine, self.device, self.config.dtype, reduce=distributed.all_reduce_sum)

    @contextlib.contextmanager
    def eval_threads(self):
        """While rows train in shards, one intra-op thread is set; evaluation's large batches use the cores."""
        threads = torch.get_num_threads()
        if self.splitter is not None:
            torch.set_num_threads(max(self.thread_chooser.active, threads))
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.write(ckpt.append_line, self.run_dir / ckpt.METRICS_FILE, record)
        self.observer.on_log(record)
        self.on_event(record)

    def record_eval(self, elapsed: float) -> bool:
        """Evaluate on val, keep the best weights (the average, with --ema); True when early stopping says stop."""
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            val = self.evaluate("val")["nll"] if len(self.splits["val"]) else math.nan
            keep = (not math.isnan(val) and val < self.state.best_val) or self.state.best_step < 0
            if keep:
                self.save_best()
        state = self.state
        if keep:
            state.best_val, state.best_step, state.evals_without_improvement = val, state.step, 0
        else:
            state.evals_without_improvement += 1
        record = {
            "event": "eval",
            "step": state.step,
            "elapsed": round(elapsed, 3),
            "val_loss": val,
            "best_val_loss": state.best_val,
        }
        if self.dist.enabled:  # replicas must agree exactly; a non-zero divergence would be a bug worth seeing
            record.update(ranks=self.dist.world_size, rank_divergence=distributed.parameter_divergence(self.model))
        self.log(record)
        return self.config.patience > 0 and state.evals_without_improvement >= self.config.patience

    def fit_closed_form(self) -> dict[str, Any]:
        start = time.perf_counter()
        # for choices made on held-out data (e.g. an n-gram's order); never test. A dev split (stream mode,
        # --dev-fraction: cut from the start of train) takes val's place, so val stays unseen until evaluation.
        val = self.splits.get("dev", self.splits.get("val"))
        self.model.fit(self.splits["train"], val if val is not None and len(val) else None)
        self.record_eval(time.perf_counter() - start)
        self.observer.close()
        self.state.elapsed = time.perf_counter() - start  # vars(state) below would otherwise report 0 s
        return {"stopped": "fitted", **vars(self.state)}

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, share: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step at learning rate `lr` on the batch (x, y); the LR finder drives this too.

        Returns the batch's mean NLL (detached) and the gradient norm before clipping (None when clipping is off).
        Under torchrun (x, y) may be this rank's rows, with `share` its fraction of the global batch's predicted
        tokens; the returned loss is then this rank's part of the global mean (loss x share: the parts add up over
        ranks). Without `share` every rank is taken to hold the whole batch.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        forward = self.eager_forward if self.observer.armed else self.train_forward  # diagnostics hooks run eagerly
        shards = self.thread_chooser.active if self.splitter is not None and self.thread_chooser.splitting else 1
        if shards > 1 and share is None and not self.observer.armed:
            with_autocast = functools.partial(autocast, self.device, self.config.dtype)
            loss = self.splitter.gradients(self.eager_forward, x, y, self.state.step, shards, with_autocast)
        elif forward is self.eager_forward:
            loss = self.forward_backward(forward, x, y, share)
        else:  # compiled: compilation happens in the first call; if it fails there (or later), train eagerly
            rng = torch.get_rng_state()
            try:
                loss = self.forward_backward(forward, x, y, share)
            except Exception as error:  # a real error in the model re-raises from the eager retry
                self.fall_back_to_eager(error)
                torch.set_rng_state(rng)
                loss = self.forward_backward(self.eager_forward, x, y, share)
        norm = None
        if self.config.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the fp16-scaled one
            norm = torch.nn.utils.clip_grad_norm_(self.gradient_holders, self.config.grad_clip)
        self.skipped_step = False
        # fp16: the GradScaler itself skips updates with NaN/inf gradients (and must see every step to adjust its
        # scale), so this check is for the unscaled dtypes.
        if self.config.skip_nonfinite and self.scaler is None:  # NaN/inf must not reach the weights nor the moments
            if norm is None:
                norm = torch.nn.utils.clip_grad_norm_(self.gradient_holders, math.inf)
            # the gradient is all-reduced, so every rank takes the same decision from its norm
            if not finite_norm(norm) or (not self.dist.enabled and not math.isfinite(loss.item())):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_step = True
                return (loss.detach() * share if share is not None else loss.detach()), norm
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradient overflowed; the scale then shrinks
            self.scaler.update()
            if not finite_norm(norm):
                norm = None  # an fp16 overflow, handled: not a diverging run
        else:
            self.optimizer.step()
        return (loss.detach() * share if share is not None else loss.detach()), norm

    def forward_backward(self, forward: Any, x: torch.Tensor, y: torch.Tensor, share: float | None) -> torch.Tensor:
        """Loss of the batch and its gradient (scaled under fp16); returns the mean NLL over this rank's tokens."""
        with autocast(self.device, self.config.dtype):
            if self.carry_state:
                carry = map_state(lambda t: t.to(self.device), self.sampler.carry)
                _, loss, carry = self.model.forward_with_state(x, y, carry)
                self.sampler.carry = detach_state(carry)
            else:
                _, loss = forward(x, y)
            # DDP averages gradients over ranks; weighting each rank's mean by (its tokens / all tokens) x ranks
            # makes that average the gradient of sum(NLL) / all tokens: the single-process gradient of the batch.
            weighted = loss * (share * self.dist.world_size) if share is not None else loss
            total = weighted + self.model.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        (total if self.scaler is None else self.scaler.scale(total)).backward()
        return loss

    def train(self) -> dict[str, Any]:
        if not self.model.trainable:
            return self.fit_closed_form()
        config, state, model = self.config, self.state, self.model
        model.train()
        self.observer.start(state.step)  # TensorBoard drops events from after this step (resume, --force)
        start = time.perf_counter() - state.elapsed
        window_loss, window_steps, window_tokens, window_start = torch.zeros(()), 0, 0, time.perf_counter()
        if not self.dist.enabled:  # (under torchrun each rank's window holds its own part)
            window_loss, window_steps, window_tokens = (
                torch.tensor(state.window_loss),
                state.window_steps,
                state.window_tokens,
            )
        stopped = "max_steps"
        if config.patience > 0 and state.evals_without_improvement >= config.patience:
            stopped = "early_stopping"  # resumed from the checkpoint where early stopping had ended the run
        while state.step < config.max_steps and stopped != "early_stopping":
            elapsed = time.perf_counter() - start
            interrupted = self.should_stop()
            if self.dist.enabled:  # every rank takes the same stop decision, and the same lr (time-based progress)
                elapsed, stop_votes = distributed.all_reduce_max([elapsed, float(interrupted)])
                interrupted = stop_votes > 0
            if config.time_budget is not None and elapsed >= config.time_budget:
                stopped = "time_budget"
                break
            if interrupted:
                stopped = "interrupted"
                break
            progress = state.step / max(config.max_steps, 1)
            if config.time_budget is not None:
                progress = max(progress, elapsed / config.time_budget)
            lr = lr_at(config, state.step, progress)
            x, y = self.sampler.next()
            batch_tokens = int((y != IGNORE).sum())
            x, y, share = self.shard(x, y, batch_tokens)
            if self.dist.enabled:  # dropout noise as a function of (seed, step, rank): ranks differ, resume is exact
                torch.manual_seed((config.seed * 1_000_003 + state.step) * 4099 + self.dist.rank)
            will_log = (state.step + 1) % config.log_every == 0 or state.step + 1 == config.max_steps
            self.observer.arm(will_log, y)
            self.thread_chooser.before_step(state.step)
            loss, grad_norm = self.train_step(x, y, lr, share)
            self.thread_chooser.after_step(state.step)
            state.step += 1
            if self.skipped_step or not math.isfinite(loss.item()) or not finite_norm(grad_norm):
                self.handle_nonfinite(loss.item(), grad_norm)  # stops, or (--skip-nonfinite) counts a skipped step
            else:
                self.nonfinite_streak = 0
                if self.average is not None:
                    self.average.update(state.step)
                window_loss += loss.detach().float().cpu()
                window_steps += 1
            window_tokens += batch_tokens
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                now = time.perf_counter()
                if self.dist.enabled:  # each rank holds its part of every step's mean loss: add them up
                    window_loss = torch.tensor(distributed.all_reduce_sum([window_loss.item()])[0])
                self.log(
                    {
                        "event": "train",
                        "step": state.step,
                        "elapsed": round(now - start, 3),
                        "train_loss": window_loss.item() / window_steps if window_steps else math.nan,
                        "lr": lr,
                        "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                        "grad_norm": float(grad_norm) if grad_norm is not None else grad_norm_of(model),
                        "max_steps": config.max_steps,
                    }
                )
                window_loss, window_steps, window_tokens, window_start = torch.zeros(()), 0, 0, now
            if state.step % config.eval_every == 0 or state.step == config.max_steps:
                early_stop = self.record_eval(time.perf_counter() - start)
                state.elapsed = time.perf_counter() - start
                state.window_loss, state.window_steps = window_loss.item(), window_steps
                state.window_tokens = window_tokens
                self.save_checkpoint()
                if early_stop:
                    stopped = "early_stopping"
                    break
        state.elapsed = time.perf_counter() - start
        if stopped != "early_stopping" and (state.best_step < 0 or stopped in ("time_budget", "interrupted")):
            if stopped != "interrupted":
                self.record_eval(state.elapsed)
            state.window_loss, state.window_steps, state.window_tokens = window_loss.item(), window_steps, window_tokens
            self.save_checkpoint()
        self.observer.close()
        if self.splitter is not None:  # what comes next (the CLI's test evaluation) gets the cores as threads again
            self.splitter.close()
            torch.set_num_threads(self.thread_chooser.active)
        return {"stopped": stopped, **vars(state)}
