"""One optimizer step, whichever way it is computed: the model eagerly or torch.compile'd (eager again if compiling
fails), inside DDP under torchrun, a batch's rows as shards on CPU threads (`--row-shards`), fp16 with a gradient
scaler; then clipping, the non-finite check and the update. The trainer's loop only calls `TrainStep.run`."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from makemore.models import LanguageModel
from makemore.models.base import detach_state, map_state
from makemore.training import distributed
from makemore.training.config import TrainConfig
from makemore.training.devices import autocast, first_line, make_grad_scaler
from makemore.training.diagnostics import Observer
from makemore.training.optim import clip_gradients
from makemore.training.row_split import RowSplitter


def finite_norm(norm: torch.Tensor | float | None) -> bool:
    """False for a NaN/inf gradient norm; None (not computed) counts as fine."""
    return norm is None or math.isfinite(float(norm))


def wrap_for_training(
    model: LanguageModel, dist: distributed.DistInfo, device: torch.device, compile: bool, warn: Callable[[str], None]
) -> tuple[Any, Any]:
    """(eager, training) forward callables: the model, inside DDP under torchrun, then torch.compile'd.

    Checkpoints, evaluation and sampling always use the model itself, so no `module.` / `_orig_mod.` prefix reaches
    a saved state_dict and runs move freely between single- and multi-process training.
    """
    forward: Any = model
    if not model.trainable:
        return forward, forward
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if not compile:
        return forward, forward
    try:  # compile the DDP wrapper, as PyTorch recommends: it then splits graphs at gradient-bucket boundaries
        return forward, torch.compile(forward, dynamic=True)
    except Exception as error:  # any failure to compile means: train eagerly, and say so
        warn(f"--compile: torch.compile is unavailable ({first_line(error)}); training without it")
        return forward, forward


def row_shards_unavailable(model: LanguageModel, config: TrainConfig, device: torch.device, sharing: bool) -> str:
    """Why `--row-shards` cannot apply here ('' when it can). `sharing`: DDP, carried state or a gradient scaler."""
    if not model.rows_independent:
        return "this model's rows are not independent"
    if device.type != "cpu":
        return "shards are CPU threads"
    if config.compile or sharing:
        return "not with --compile, torchrun, --stateful or fp16"
    return ""


class TrainStep:
    """Computes and applies one step. `sampler`: the training sampler when the model carries state across batches
    (its `carry` is read and replaced); None otherwise."""

    def __init__(
        self,
        model: LanguageModel,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        dist: distributed.DistInfo,
        observer: Observer,
        sampler: Any = None,
        warn: Callable[[str], None] = lambda message: None,
    ):
        self.model, self.optimizer, self.config, self.device, self.dist = model, optimizer, config, device, dist
        self.observer, self.sampler, self.warn = observer, sampler, warn
        self.scaler = make_grad_scaler(device, config.dtype)
        self.params = [p for p in model.parameters() if p.requires_grad]  # what clipping reads
        self.eager_forward, self.train_forward = wrap_for_training(model, dist, device, config.compile, warn)
        self.splitter = self.make_splitter()
        self.skipped = False  # whether the last step's update was skipped (--skip-nonfinite)

    def make_splitter(self) -> RowSplitter | None:
        if self.config.row_shards == 1:
            return None
        sharing = self.dist.enabled or self.sampler is not None or self.scaler is not None
        why_not = row_shards_unavailable(self.model, self.config, self.device, sharing)
        if why_not:
            self.warn(f"--row-shards {self.config.row_shards}: {why_not}; training each batch whole")
            return None
        return RowSplitter(self.model, self.config.seed)

    def close(self) -> None:
        if self.splitter is not None:
            self.splitter.close()

    def run(
        self, x: torch.Tensor, y: torch.Tensor, lr: float, step: int, share: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step at learning rate `lr` on the batch (x, y) at training step `step`.

        Returns the batch's mean NLL (detached) and the gradient norm before clipping (None when clipping is off).
        Under torchrun (x, y) may be this rank's rows, with `share` its fraction of the global batch's predicted
        tokens; the returned loss is then this rank's part of the global mean (loss x share: the parts add up over
        ranks). Without `share` every rank is taken to hold the whole batch.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        loss = self.gradients(x, y, step, share)
        part = loss.detach() * share if share is not None else loss.detach()
        return part, self.update(loss)

    def gradients(self, x: torch.Tensor, y: torch.Tensor, step: int, share: float | None) -> torch.Tensor:
        """Set the gradients; return the mean NLL of this rank's tokens."""
        if self.splitter is not None and share is None and not self.observer.armed:
            context = functools.partial(autocast, self.device, self.config.dtype)
            return self.splitter.gradients(self.eager_forward, x, y, step, self.config.row_shards, context)
        if self.observer.armed or self.train_forward is self.eager_forward:  # diagnostics hooks run eagerly
            return self.forward_backward(self.eager_forward, x, y, share)
        rng = torch.get_rng_state()  # compiled: compilation happens in the first call; if it fails, train eagerly
        try:
            return self.forward_backward(self.train_forward, x, y, share)
        except Exception as error:  # a real error in the model re-raises from the eager retry
            self.warn(f"--compile: compiling the model failed ({first_line(error)}); training without it")
            self.train_forward = self.eager_forward
            torch.set_rng_state(rng)
            return self.forward_backward(self.eager_forward, x, y, share)

    def forward_backward(self, forward: Any, x: torch.Tensor, y: torch.Tensor, share: float | None) -> torch.Tensor:
        """Loss of the batch and its gradient (scaled under fp16); returns the mean NLL over this rank's tokens."""
        with autocast(self.device, self.config.dtype):
            if self.sampler is not None:  # the model continues from the state after the previous batch, detached
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

    def update(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Clip, check, and step the optimizer; returns the gradient norm before clipping (None: not computed)."""
        norm = None
        if self.config.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the fp16-scaled one
            norm = clip_gradients(self.params, self.config.grad_clip)
        self.skipped = False
        # fp16: the GradScaler itself skips updates with NaN/inf gradients (and must see every step to adjust its
        # scale), so this check is for the unscaled dtypes.
        if self.config.skip_nonfinite and self.scaler is None:  # NaN/inf must not reach the weights nor the moments
            if norm is None:
                norm = clip_gradients(self.params, math.inf)
            # the gradient is all-reduced, so every rank takes the same decision from its norm
            if not finite_norm(norm) or (not self.dist.enabled and not math.isfinite(loss.item())):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped = True
                return norm
        if self.scaler is None:
            self.optimizer.step()
            return norm
        self.scaler.step(self.optimizer)  # skipped when the scaled gradient overflowed; the scale then shrinks
        self.scaler.update()
        return norm if finite_norm(norm) else None  # an fp16 overflow, handled: not a diverging run
