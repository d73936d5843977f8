"""The trainer: fits any model through the one interface, evaluates on whole splits, checkpoints for exact resume.

It knows no model by name: count models are fitted in closed form because they say `trainable = False`.
It prints nothing: progress goes to an `on_event` callback (the CLI draws a progress bar from it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import check, field
from .data import IGNORE, LengthBucketSampler, LineSplit
from .errors import MakemoreError
from .models import LanguageModel


@dataclass
class TrainConfig:
    max_steps: int = field(5000, "number of optimizer steps")
    time_budget: float | None = field(None, "stop after this many seconds of training (None: no limit)")
    batch_size: int = field(32, "items per batch (line mode)")
    optimizer: str = field("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = field(3e-3, "peak learning rate")
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
    seed: int = field(1337, "seed for the data split, initialisation, batches and sampling")
    device: str = field("auto", "cpu, cuda, mps, or auto (cuda, then mps, then cpu)")
    dtype: str = field("fp32", "autocast dtype", choices=("fp32", "bf16", "fp16"))
    threads: int = field(0, "CPU threads for PyTorch (0: PyTorch's default)")
    log_every: int = field(100, "log the training loss every N steps")

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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MakemoreError("--device cuda: no CUDA GPU is available here")
    return device


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    dtype: str = "fp32",
) -> dict[str, float]:
    """Exact mean NLL (nats per predicted token) over every batch given, plus bits/char and perplexity."""
    device = device or model.device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits, _ = model(x)
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((y != IGNORE).sum())
    model.train(was_training)
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


def build_optimizer(model: LanguageModel, config: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on matrices and embeddings only: decaying biases and norm gains only hurts (nanoGPT).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    try:  # the fused kernel is one call per step instead of a Python loop over parameters
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


@dataclass
class TrainState:
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    elapsed: float = 0.0  # seconds of training before this process (resume)
    evals_without_improvement: int = 0


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
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.state = TrainState()
        self.optimizer = build_optimizer(model, config) if model.trainable else None
        self.sampler = LengthBucketSampler(splits["train"], config.batch_size, config.seed, bucket=config.bucket)

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta: dict[str, Any] = {"state": vars(self.state).copy()}
        if self.optimizer is not None:
            opt_tensors, meta["optimizer"] = ckpt.flatten_optimizer(self.optimizer.state_dict())
            tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors.update({f"sampler.{k}": v for k, v in self.sampler.state_dict().items()})
        # Weights+state first, then the small JSON that names their step: a kill between the two leaves a
        # checkpoint whose JSON is one save behind, which resume detects (step mismatch) and reports.
        meta["state"]["checkpoint_step"] = self.state.step
        tensors["meta.step"] = torch.tensor(self.state.step)
        ckpt.save_tensors(self.run_dir / ckpt.CHECKPOINT_FILE, tensors)
        ckpt.write_json(self.run_dir / ckpt.CHECKPOINT_META, meta)

    def restore(self) -> None:
        meta = ckpt.read_json(self.run_dir / ckpt.CHECKPOINT_META)
        tensors = ckpt.load_tensors(self.run_dir / ckpt.CHECKPOINT_FILE)
        where = self.run_dir / ckpt.CHECKPOINT_FILE
        try:
            if int(tensors["meta.step"]) != meta["state"]["checkpoint_step"]:
                raise MakemoreError(f"{where}: does not match {ckpt.CHECKPOINT_META} (interrupted save?)")
            state = {k: v for k, v in meta["state"].items() if k != "checkpoint_step"}
            self.state = TrainState(**state)
            model_tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
            ckpt.load_weights(self.model, where, model_tensors)
            if self.optimizer is not None:
                self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"]))
            torch.set_rng_state(tensors["rng.torch"])
            self.sampler.load_state_dict(
                {k[len("sampler.") :]: v for k, v in tensors.items() if k.startswith("sampler.")}
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise MakemoreError(f"{where}: cannot resume from this checkpoint ({error})") from None

    def save_best(self) -> None:
        ckpt.save_tensors(self.run_dir / ckpt.WEIGHTS_FILE, self.model.state_dict())

    # ----------------------------------------------------------------------------------------------- training
    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate(
            self.model, self.splits[split].eval_batches(self.config.eval_batch_size), self.device, self.config.dtype
        )

    def log(self, record: dict[str, Any]) -> None:
        ckpt.append_line(self.run_dir / ckpt.METRICS_FILE, record)
        self.on_event(record)

    def record_eval(self, elapsed: float) -> bool:
        """Evaluate on val, keep the best weights; True when early stopping says stop."""
        val = self.evaluate("val")["nll"] if len(self.splits["val"]) else math.nan
        state = self.state
        improved = not math.isnan(val) and val < state.best_val
        if improved or state.best_step < 0:
            state.best_val, state.best_step, state.evals_without_improvement = val, state.step, 0
            self.save_best()
        else:
            state.evals_without_improvement += 1
        self.log(
            {
                "event": "eval",
                "step": state.step,
                "elapsed": round(elapsed, 3),
                "val_loss": val,
                "best_val_loss": state.best_val,
            }
        )
        return self.config.patience > 0 and state.evals_without_improvement >= self.config.patience

    def fit_closed_form(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.model.fit(self.splits["train"])
        self.record_eval(time.perf_counter() - start)
        return {"stopped": "fitted", "elapsed": time.perf_counter() - start, **vars(self.state)}

    def train(self) -> dict[str, Any]:
        if not self.model.trainable:
            return self.fit_closed_form()
        config, state, model = self.config, self.state, self.model
        model.train()
        start = time.perf_counter() - state.elapsed
        window_loss, window_steps, window_tokens, window_start = torch.zeros(()), 0, 0, time.perf_counter()
        stopped = "max_steps"
        while state.step < config.max_steps:
            elapsed = time.perf_counter() - start
            if config.time_budget is not None and elapsed >= config.time_budget:
                stopped = "time_budget"
                break
            if self.should_stop():
                stopped = "interrupted"
                break
            progress = state.step / max(config.max_steps, 1)
            if config.time_budget is not None:
                progress = max(progress, elapsed / config.time_budget)
            lr = lr_at(config, state.step, progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self.sampler.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device, config.dtype):
                _, loss = model(x, y)
                total = loss + model.penalty()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.optimizer.step()
            state.step += 1
            window_loss += loss.detach().float().cpu()
            window_steps += 1
            window_tokens += int((y != IGNORE).sum())
            if not math.isfinite(loss.item()):
                raise MakemoreError(
                    f"the training loss became {loss.item()} at step {state.step}: "
                    "lower --lr (the best checkpoint is untouched)"
                )
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                now = time.perf_counter()
                self.log(
                    {
                        "event": "train",
                        "step": state.step,
                        "elapsed": round(now - start, 3),
                        "train_loss": window_loss.item() / window_steps,
                        "lr": lr,
                        "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                        "max_steps": config.max_steps,
                    }
                )
                window_loss, window_steps, window_tokens, window_start = torch.zeros(()), 0, 0, now
            if state.step % config.eval_every == 0 or state.step == config.max_steps:
                early_stop = self.record_eval(time.perf_counter() - start)
                state.elapsed = time.perf_counter() - start
                self.save_checkpoint()
                if early_stop:
                    stopped = "early_stopping"
                    break
        state.elapsed = time.perf_counter() - start
        if stopped != "early_stopping" and (state.best_step < 0 or stopped in ("time_budget", "interrupted")):
            if stopped != "interrupted":
                self.record_eval(state.elapsed)
            self.save_checkpoint()
        return {"stopped": stopped, **vars(state)}
