"""The trainer: fits any model through the one interface, evaluates on whole splits, checkpoints for exact resume.

It knows no model by name: count models are fitted in closed form because they say `trainable = False`.
It prints nothing: progress goes to an `on_event` callback (the CLI draws a progress bar from it).

A run is deterministic: the same config gives the same weights and metrics bit for bit, whatever the load, and a
run killed at any moment and resumed ends as if it had never stopped. Every number of a step is a function of the
config and the step: the thread count is set once (`--threads`), row shards are a flag (`--row-shards`), and a time
budget decides when to stop, never the learning rate (see `schedule`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from makemore.data.batching import LengthBucketSampler, PackedSampler
from makemore.data.lines import IGNORE, LineSplit
from makemore.errors import MakemoreError
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt
from makemore.training import distributed
from makemore.training.checkpointing import RunWriter, TrainingParts, restore_checkpoint, save_checkpoint
from makemore.training.config import TrainConfig, TrainState
from makemore.training.devices import keep_freed_memory, resolve_device
from makemore.training.diagnostics import TENSORBOARD_HINT, Observer, grad_norm_of
from makemore.training.evaluation import evaluate
from makemore.training.optim import WeightAverage, build_optimizer
from makemore.training.schedule import Horizon
from makemore.training.steps import TrainStep, finite_norm

MAX_NONFINITE_IN_A_ROW = 20  # --skip-nonfinite gives up after this many skipped updates in a row


class LogWindow:
    """The training losses, steps and tokens since the last log line (a resumed run continues the open window)."""

    def __init__(self, loss: float = 0.0, steps: int = 0, tokens: int = 0):
        self.loss, self.steps, self.tokens = torch.tensor(loss), steps, tokens
        self.started = time.perf_counter()

    @classmethod
    def resumed(cls, state: TrainState) -> LogWindow:
        return cls(state.window_loss, state.window_steps, state.window_tokens)

    def save_into(self, state: TrainState) -> None:
        state.window_loss, state.window_steps, state.window_tokens = self.loss.item(), self.steps, self.tokens


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
        if config.threads:  # once, for the whole run: the thread count is part of what a step computes
            torch.set_num_threads(config.threads)
        self.threads = torch.get_num_threads()
        self.dist = distributed.current()  # rank and world size under torchrun; a single process otherwise
        self.device = distributed.local_device(resolve_device(config.device), self.dist)
        self.model = model.to(self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # speed only (devices.keep_freed_memory)
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.state = TrainState()
        self.files = RunWriter(self.run_dir, self.dist.is_main, lambda: self.state.step)
        self.skipped_steps, self.nonfinite_streak = 0, 0  # --skip-nonfinite bookkeeping
        self.step_seconds = 0.0  # how long the last step took (a time budget stops one step early enough)
        self.evaluated_at = -1  # the step of the last val evaluation, which a stop need not repeat
        self.warnings: list[str] = []  # also sent as "warning" events; these lists those from before on_event was set
        self.sampler = self.make_sampler()
        # A sampler that carries state (stream mode, --stateful) feeds consecutive windows of the same streams: the
        # model continues from the state after the previous batch, detached (truncated BPTT).
        self.carry_state = getattr(self.sampler, "carries_state", False) and model.carries_state
        if self.carry_state and self.dist.world_size > 1:
            raise MakemoreError("--stateful training runs in one process (its streams cannot be split across ranks)")
        self.optimizer = build_optimizer(model, config) if model.trainable else None
        # --diagnostics (forward hooks, only on logged steps) and --tensorboard; a no-op when both are off
        self.observer = Observer(model, self.optimizer, self.run_dir, config.diagnostics, config.tensorboard, IGNORE)
        self.stepper = self.make_stepper()
        self.average = WeightAverage(model, config.ema) if config.ema > 0 and model.trainable else None
        if config.tensorboard and not self.observer.want_tensorboard:
            self.warn(TENSORBOARD_HINT)

    def make_sampler(self) -> Any:
        """Every rank draws the same global batch from the same seeded sampler and keeps its slice of rows, so the
        sampler state is the same everywhere and a run resumes with any number of ranks."""
        config, train = self.config, self.splits["train"]
        self.global_batch = config.batch_size * (self.dist.world_size if config.batch_per_rank else 1)
        if self.global_batch < self.dist.world_size:
            raise MakemoreError(
                f"--batch-size {config.batch_size} is smaller than the {self.dist.world_size} ranks: "
                "every rank needs at least one item per batch"
            )
        make_sampler = getattr(train, "make_sampler", None)  # stream mode: random windows or streams
        if make_sampler is not None:
            return make_sampler(self.global_batch, config.seed)
        if config.pack and self.model.packable:  # rows of several items, the model restarting at each: ~no padding
            return PackedSampler(train, self.global_batch, config.seed, width=config.pack_width)
        return LengthBucketSampler(train, self.global_batch, config.seed, bucket=config.bucket)

    def make_stepper(self) -> TrainStep | None:
        if self.optimizer is None:
            return None
        carried = self.sampler if self.carry_state else None
        parts = (self.model, self.optimizer, self.config, self.device, self.dist, self.observer)
        return TrainStep(*parts, sampler=carried, warn=self.warn)

    # ---------------------------------------------------------------------------- what the CLI and tests look at
    @property
    def scaler(self) -> Any:
        return self.stepper.scaler if self.stepper is not None else None

    @scaler.setter
    def scaler(self, scaler: Any) -> None:
        if self.stepper is not None:
            self.stepper.scaler = scaler

    @property
    def eager_forward(self) -> Any:
        return self.stepper.eager_forward if self.stepper is not None else self.model

    @property
    def train_forward(self) -> Any:
        return self.stepper.train_forward if self.stepper is not None else self.model

    @property
    def splitter(self) -> Any:
        return self.stepper.splitter if self.stepper is not None else None

    @property
    def checkpoint_step(self) -> int | None:
        return self.files.checkpoint_step

    def warn(self, message: str) -> None:
        """A one-line warning for the CLI to show (the trainer prints nothing); rank 0 speaks for all."""
        if self.dist.is_main:
            self.warnings.append(message)
            self.on_event({"event": "warning", "message": message})

    # ------------------------------------------------------------------------------------------- checkpoints
    def parts(self) -> TrainingParts:
        return TrainingParts(self.model, self.optimizer, self.scaler, self.average, self.sampler, self.device)

    def save_checkpoint(self) -> None:
        save_checkpoint(self.files, self.parts(), self.state)

    def restore(self) -> bool:
        """Continue from the run's checkpoint: weights, optimizer, RNG and sampler state, so the rest of the run is
        what it would have been without the stop. Log lines written after that checkpoint are dropped.

        Returns False when the run has no checkpoint yet (stopped before its first one): training starts over.
        """
        state = restore_checkpoint(self.files, self.parts())
        if state is None:
            return False
        self.state = state
        return True

    def save_best(self) -> None:
        self.files.write(ckpt.save_tensors, self.run_dir / ckpt.WEIGHTS_FILE, self.model.state_dict())

    # -------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        batches = self.splits[split].eval_batches(self.config.eval_batch_size)
        if not self.dist.enabled or getattr(batches, "carry_state", False):  # streams carry state: one rank, in order
            with self.eval_threads():
                return evaluate(self.model, batches, self.device, self.config.dtype)
        # Each rank evaluates every world_size-th batch with the plain model (a DDP forward would expect all ranks
        # to take the same number of steps); the NLL sums and token counts are then added up over ranks.
        mine = itertools.islice(batches, self.dist.rank, None, self.dist.world_size)
        return evaluate(self.model, mine, self.device, self.config.dtype, reduce=distributed.all_reduce_sum)

    def time_evaluation(self) -> float:
        """Seconds one val evaluation takes (nothing recorded, nothing changed: eval mode draws no random numbers),
        so that a time budget's schedule leaves room for the evaluations (the slowest rank's time under torchrun)."""
        if not len(self.splits["val"]):
            return 0.0
        began = time.perf_counter()
        self.evaluate("val")
        seconds = time.perf_counter() - began
        return distributed.all_reduce_max([seconds])[0] if self.dist.enabled else seconds

    @contextlib.contextmanager
    def eval_threads(self) -> Iterator[None]:
        """While rows train in shards the main thread keeps one intra-op thread; evaluation gets the run's threads."""
        training = torch.get_num_threads()
        if training == self.threads:
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(training)

    def record_eval(self, elapsed: float) -> bool:
        """Evaluate on val, keep the best weights (the average, with --ema); True when early stopping says stop."""
        self.evaluated_at = self.state.step
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

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.files.write(ckpt.append_line, self.run_dir / ckpt.METRICS_FILE, record)
        self.observer.on_log(record)
        self.on_event(record)

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

    # ---------------------------------------------------------------------------------------------- training
    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, share: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step at learning rate `lr` on the batch (x, y) (see `TrainStep.run`); the LR finder drives
        this too. Returns the batch's mean NLL (detached) and the gradient norm before clipping (None: not clipped)."""
        return self.stepper.run(x, y, lr, self.state.step, share)

    def shard(
        self, x: torch.Tensor, y: torch.Tensor, batch_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """This rank's rows of a global batch, and its share of the batch's predicted tokens (None: one process)."""
        if not self.dist.enabled:
            return x, y, None
        rows = distributed.shard_rows(len(x), self.dist)
        x, y = x[rows], y[rows]
        return x, y, int((y != IGNORE).sum()) / batch_tokens

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

    def stop_reason(self, start: float, horizon: Horizon) -> str | None:
        """Why training stops before the next step (None: it goes on); also times the start for the schedule."""
        elapsed, interrupted, step_seconds = time.perf_counter() - start, self.should_stop(), self.step_seconds
        if self.dist.enabled:  # every rank takes the same decisions: the slowest clock, anyone's stop
            elapsed, stop_votes, step_seconds = distributed.all_reduce_max([elapsed, float(interrupted), step_seconds])
            interrupted = stop_votes > 0
        fixed = horizon.steps
        if self.config.time_budget is not None and horizon.fixes_at(self.state.step):
            horizon.timed_evaluation(self.time_evaluation(), self.config.eval_every)
            elapsed = max(elapsed, time.perf_counter() - start)  # the budget left excludes that evaluation
        horizon.seconds_at(self.state.step, elapsed)
        self.state.schedule_steps, self.state.final_eval_seconds = horizon.steps, horizon.final_seconds
        if horizon.steps != fixed and self.config.time_budget is not None and self.dist.is_main:
            self.on_event({
                "event": "info",
                "message": f"schedule: {horizon.steps:,} steps fit the {self.config.time_budget:g} s budget "
                f"(fixed now; --max-steps {horizon.steps} --time-budget none repeats this run)",
            })  # fmt: skip
        if self.state.step >= (horizon.steps or self.config.max_steps):
            return "max_steps"
        if horizon.out_of_time(elapsed, step_seconds):
            return "time_budget"
        return "interrupted" if interrupted else None

    def one_step(self, lr: float, window: LogWindow) -> torch.Tensor | None:
        """Draw a batch, take a step, account for it; returns the gradient norm."""
        config, state = self.config, self.state
        x, y = self.sampler.next()
        batch_tokens = int((y != IGNORE).sum())
        x, y, share = self.shard(x, y, batch_tokens)
        if self.dist.enabled:  # dropout noise as a function of (seed, step, rank): ranks differ, resume is exact
            torch.manual_seed((config.seed * 1_000_003 + state.step) * 4099 + self.dist.rank)
        self.observer.arm(self.is_log_step(state.step + 1), y)
        loss, grad_norm = self.train_step(x, y, lr, share)
        state.step += 1
        if self.stepper.skipped or not math.isfinite(loss.item()) or not finite_norm(grad_norm):
            self.handle_nonfinite(loss.item(), grad_norm)  # stops, or (--skip-nonfinite) counts a skipped step
        else:
            self.nonfinite_streak = 0
            if self.average is not None:
                self.average.update(state.step)
            window.loss += loss.detach().float().cpu()
            window.steps += 1
        window.tokens += batch_tokens
        return grad_norm

    def is_log_step(self, step: int) -> bool:
        return step % self.config.log_every == 0 or step == (self.state.schedule_steps or self.config.max_steps)

    def log_window(self, window: LogWindow, start: float, lr: float, grad_norm: torch.Tensor | None) -> LogWindow:
        """Write the train log line of the window; returns the next, empty window."""
        now = time.perf_counter()
        if self.dist.enabled:  # each rank holds its part of every step's mean loss: add them up
            window.loss = torch.tensor(distributed.all_reduce_sum([window.loss.item()])[0])
        self.log(
            {
                "event": "train",
                "step": self.state.step,
                "elapsed": round(now - start, 3),
                "train_loss": window.loss.item() / window.steps if window.steps else math.nan,
                "lr": lr,
                "tokens_per_s": window.tokens / max(now - window.started, 1e-9),
                "grad_norm": float(grad_norm) if grad_norm is not None else grad_norm_of(self.model),
                "max_steps": self.state.schedule_steps or self.config.max_steps,
            }
        )
        return LogWindow()

    def checkpoint(self, start: float, window: LogWindow) -> None:
        self.state.elapsed = time.perf_counter() - start
        window.save_into(self.state)
        self.save_checkpoint()

    def train(self) -> dict[str, Any]:
        if not self.model.trainable:
            return self.fit_closed_form()
        config, state = self.config, self.state
        self.model.train()
        self.observer.start(state.step)  # TensorBoard drops events from after this step (resume, --force)
        start = time.perf_counter() - state.elapsed
        horizon = Horizon(config, state.schedule_steps, state.final_eval_seconds)
        # (under torchrun each rank's window holds its own part of the losses: a resumed window starts empty)
        window = LogWindow() if self.dist.enabled else LogWindow.resumed(state)
        stopped = None
        if config.patience > 0 and state.evals_without_improvement >= config.patience:
            stopped = "early_stopping"  # resumed from the checkpoint where early stopping had ended the run
        with self.training_threads():
            while stopped is None and (stopped := self.stop_reason(start, horizon)) is None:
                lr, began = horizon.lr(state.step), time.perf_counter()
                grad_norm = self.one_step(lr, window)
                self.step_seconds = time.perf_counter() - began
                if self.is_log_step(state.step):
                    window = self.log_window(window, start, lr, grad_norm)
                if state.step % config.eval_every == 0 or state.step == horizon.steps:
                    stopped = "early_stopping" if self.record_eval(time.perf_counter() - start) else None
                    self.checkpoint(start, window)
        state.elapsed = time.perf_counter() - start
        if stopped != "early_stopping" and (state.best_step < 0 or stopped in ("time_budget", "interrupted")):
            if stopped != "interrupted" and self.evaluated_at != state.step:
                self.record_eval(state.elapsed)
            self.checkpoint(start, window)
        self.observer.close()
        self.stepper.close()
        return {"stopped": stopped, **vars(state)}

    @contextlib.contextmanager
    def training_threads(self) -> Iterator[None]:
        """Row shards train on one intra-op thread each, the main thread's shard too; the run's threads after."""
        if self.splitter is None:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)
