"""Save and restore everything a run needs to continue as if it had never stopped: weights, optimizer moments, the
gradient scaler, the weight average, RNG and sampler state, and the `TrainState` (step, best loss, schedule length).

One file: the JSON state rides in the safetensors header, so one atomic rename replaces the weights and the step
they belong to together. (Two files could be left one save apart by a kill between them.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from makemore import config as config_mod
from makemore.errors import MakemoreError
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt
from makemore.training import optimizer_state
from makemore.training.config import TrainState
from makemore.training.diagnostics import DIAGNOSTICS_FILE
from makemore.training.optim import WeightAverage


@dataclass
class TrainingParts:
    """What a checkpoint holds besides the `TrainState`; None for parts a run does not have."""

    model: LanguageModel
    optimizer: torch.optim.Optimizer | None
    scaler: Any
    average: WeightAverage | None
    sampler: Any
    device: torch.device


class RunWriter:
    """Writes the run directory's files (rank 0 only); a full disk or a read-only directory stops training with one
    line that says where the last checkpoint stands."""

    def __init__(self, run_dir: Path, is_main: bool, current_step: Callable[[], int]):
        self.run_dir = run_dir
        self.is_main = is_main
        self.current_step = current_step
        self.checkpoint_step: int | None = None  # step of the last checkpoint written or restored

    def write(self, writer: Callable[..., None], path: Path, *args: Any) -> None:
        if not self.is_main:
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
                f"{path}: cannot write ({error.strerror or error}): training stopped at step {self.current_step()}; "
                f"{last}"
            ) from None


def checkpoint_tensors(parts: TrainingParts, state: TrainState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON metadata) of a checkpoint."""
    tensors = {f"model.{k}": v for k, v in parts.model.state_dict().items()}
    meta: dict[str, Any] = {"state": vars(state).copy()}
    if parts.optimizer is not None:
        opt_tensors, meta["optimizer"] = optimizer_state.flatten_optimizer(parts.optimizer.state_dict())
        tensors.update(opt_tensors)
    if parts.scaler is not None:  # fp16: the loss scale found so far (plain numbers)
        meta["grad_scaler"] = parts.scaler.state_dict()
    if parts.average is not None:
        tensors.update({f"ema.{k}": v for k, v in parts.average.state_dict().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if parts.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(parts.device)
    tensors.update({f"sampler.{k}": v for k, v in parts.sampler.state_dict().items()})
    return tensors, meta


def save_checkpoint(writer: RunWriter, parts: TrainingParts, state: TrainState) -> None:
    if not writer.is_main:
        return
    tensors, meta = checkpoint_tensors(parts, state)
    header = {ckpt.CHECKPOINT_METADATA_KEY: json.dumps(meta)}
    writer.write(ckpt.save_tensors, writer.run_dir / ckpt.CHECKPOINT_FILE, tensors, header)
    (writer.run_dir / ckpt.CHECKPOINT_META).unlink(missing_ok=True)  # an older run's separate JSON, now stale
    writer.checkpoint_step = state.step


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def read_metadata(run_dir: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> dict[str, Any]:
    where = run_dir / ckpt.CHECKPOINT_FILE
    if ckpt.CHECKPOINT_METADATA_KEY in header:
        return json.loads(header[ckpt.CHECKPOINT_METADATA_KEY])
    meta = ckpt.read_json(run_dir / ckpt.CHECKPOINT_META)  # an older run: JSON beside the weights, matched by step
    if int(tensors["meta.step"]) != meta["state"]["checkpoint_step"]:
        raise MakemoreError(f"{where}: does not match {ckpt.CHECKPOINT_META} (interrupted save?)")
    return meta


def load_parts(parts: TrainingParts, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: Path) -> None:
    """Put a checkpoint's tensors and settings back into the parts of a run."""
    ckpt.load_weights(parts.model, where, _with_prefix(tensors, "model."))
    if parts.optimizer is not None:
        saved = optimizer_state.unflatten_optimizer(tensors, meta["optimizer"], parts.optimizer, str(where))
        parts.optimizer.load_state_dict(saved)
    if parts.average is not None:
        parts.average.load_state_dict(_with_prefix(tensors, "ema."))
    if parts.scaler is not None and "grad_scaler" in meta:
        parts.scaler.load_state_dict(meta["grad_scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and parts.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], parts.device)
    parts.sampler.load_state_dict(_with_prefix(tensors, "sampler."))


def restore_checkpoint(writer: RunWriter, parts: TrainingParts) -> TrainState | None:
    """The state of the run's checkpoint, its parts loaded; log lines past it dropped. None: no checkpoint yet (the
    logs are emptied: training starts over)."""
    run_dir = writer.run_dir
    where = run_dir / ckpt.CHECKPOINT_FILE
    if not where.exists() and not (run_dir / ckpt.CHECKPOINT_META).exists():
        truncate_logs(writer, 0)
        return None
    tensors, header = ckpt.load_tensors_with_metadata(where)
    try:
        meta = read_metadata(run_dir, tensors, header)
        saved = {k: v for k, v in meta["state"].items() if k != "checkpoint_step"}
        state = config_mod.from_dict(TrainState, saved, f"{where}: state", finite=False)
        load_parts(parts, tensors, meta, where)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, RecursionError) as error:
        raise MakemoreError(f"{where}: cannot resume from this checkpoint ({error!r})") from None
    writer.checkpoint_step = state.step
    truncate_logs(writer, state.step)
    return state


def truncate_logs(writer: RunWriter, step: int) -> None:
    """Drop log lines from after `step` (written after the checkpoint a run resumes from)."""
    if writer.is_main:
        for log in (ckpt.METRICS_FILE, DIAGNOSTICS_FILE):
            ckpt.truncate_metrics(writer.run_dir / log, step)
