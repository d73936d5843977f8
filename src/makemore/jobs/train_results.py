"""How a training run ends: the result `makemore.train` returns (the best weights evaluated on val, samples drawn
from them and written to RUN/samples.txt), or why a resumed run has nothing left to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from makemore.generation.classify import conditioned
from makemore.generation.sample import DecodeOptions, generate
from makemore.generation.stream import stream_text
from makemore.models import MODELS, LanguageModel
from makemore.runs import checkpoint as ckpt
from makemore.training import distributed
from makemore.training.config import TrainConfig
from makemore.training.evaluation import evaluate

STREAM_SAMPLE_CHARS = 300  # length of the sample drawn at the end of a stream-mode training run


def summary(run_dir: Path, spec: ckpt.RunSpec, config: TrainConfig, state: dict[str, Any]) -> dict[str, Any]:
    """The fields every result has, from a training state (the trainer's result or a checkpoint's state)."""
    return {
        "run_dir": str(run_dir),
        "model": spec.model_name,
        "stopped": state.get("stopped"),
        "step": state.get("step", 0),
        "max_steps": config.max_steps,
        "elapsed": state.get("elapsed", 0.0),
        "best_val": state.get("best_val"),
        "best_step": state.get("best_step"),
        "lr": config.lr,
        "val": None,
        "samples": None,
        "sample_text": None,
        "fitted": {},
        "resumed_from": None,
        "message": None,
        "is_main": True,
    }


def finish(
    trainer: Any,
    data: Any,
    splits: dict[str, Any],
    spec: ckpt.RunSpec,
    result: dict[str, Any],
    run_dir: Path,
    samples: int,
    fitted: dict[str, Any],
    resumed_from: int | None,
    events: Any,
) -> dict[str, Any]:
    """After training: on rank 0, the best weights' val metrics and the samples (unless interrupted)."""
    out = summary(run_dir, spec, trainer.config, result)
    out.update(fitted=fitted, resumed_from=resumed_from, is_main=trainer.dist.is_main)
    if result["stopped"] == "interrupted" or not trainer.dist.is_main:
        return out
    _, best = ckpt.load_model(run_dir, trainer.device)
    out["val"] = evaluate(best, splits["val"].eval_batches(trainer.config.eval_batch_size))
    if samples and data.stream:
        options = DecodeOptions()
        text = "".join(stream_text(best, spec.vocab, "", STREAM_SAMPLE_CHARS, options, trainer.config.seed))
        ckpt.atomic_write(run_dir / "samples.txt", (text + "\n").encode("utf-8"))
        out["sample_text"] = text
    elif samples:
        # a labelled run samples from p(item) = sum_k p(k) p(item | k)
        items = draw_items(conditioned(best, spec.data), spec, data.items, samples, trainer.config.seed)
        ckpt.atomic_write(run_dir / "samples.txt", "".join(item + "\n" for item in items).encode("utf-8"))
        train, held_out = set(data.items["train"]), set(data.items["val"]) | set(data.items["test"])
        out["samples"] = [{"item": item, "status": status(item, train, held_out)} for item in items]
    return out


def draw_items(model: LanguageModel, spec: ckpt.RunSpec, items: dict[str, list[str]], n: int, seed: int) -> list[str]:
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return [spec.vocab.decode(ids) for ids in generate(model, n, max_item_len(spec, items), generator=generator)]


def max_item_len(spec: ckpt.RunSpec, items: dict[str, list[str]]) -> int:
    """The longest item to draw: the run's recorded limit, else twice its longest item."""
    if "max_len" in spec.data:
        return int(spec.data["max_len"])
    return max((len(item) for split in items.values() for item in split), default=32) * 2


def status(item: str, train: set[str], held_out: set[str]) -> str:
    if item in train:
        return "in-train"
    return "in-val-test" if item in held_out else "new"


def nothing_to_do(
    run_dir: Path, spec: ckpt.RunSpec, config: TrainConfig, saved: dict[str, Any] | None, limits_changed: bool
) -> dict[str, Any] | None:
    """The result of resuming a run that has nothing left to do under its limits (None: it trains on)."""
    if not MODELS[spec.model_name].model_class.trainable:
        if not (run_dir / ckpt.WEIGHTS_FILE).exists():
            return None  # never fitted (stopped before): fit it now
        return finished(run_dir, spec, config, saved or {}, "fitted", "a count model is fitted in one go")
    if saved is None:
        return None  # no checkpoint yet: starts over
    step, budget = saved.get("step", 0), config.time_budget
    if config.patience and saved.get("evals_without_improvement", 0) >= config.patience:
        return finished(run_dir, spec, config, saved, "early_stopping", "raise --patience to train on")
    if step >= config.max_steps:
        return finished(run_dir, spec, config, saved, "max_steps", "raise --max-steps to train on")
    if budget is not None and saved.get("elapsed", 0.0) >= budget:
        hint = f"the --time-budget of {budget:g}s is used up; raise it (the total) or give --max-steps"
        return finished(run_dir, spec, config, saved, "time_budget", hint)
    if not limits_changed and 0 < saved.get("schedule_steps", 0) <= step:
        return finished(run_dir, spec, config, saved, "max_steps", "raise --max-steps or --time-budget to train on")
    return None


def finished(
    run_dir: Path, spec: ckpt.RunSpec, config: TrainConfig, state: dict[str, Any], stopped: str, hint: str
) -> dict[str, Any]:
    """A resumed run that was already done: how it stopped, in one line that says what would train it on."""
    out = summary(run_dir, spec, config, {**state, "stopped": stopped})
    out["message"] = f"stopped: {stopped} at step {out['step']}; nothing left to do ({hint})"
    out["resumed_from"] = out["step"]
    out["is_main"] = distributed.current().is_main
    return out
