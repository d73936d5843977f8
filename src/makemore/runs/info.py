"""What a run is, in one JSON-ready dict: model, config, size, training progress, best val loss and where its data
came from. `makemore info RUN` prints it; the Python API and a web page can show the same dict.

It reads only run.json, the weights (to count parameters) and the small JSON parts of the checkpoint and the log:
never the optimizer's tensors, so it is quick on a large run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from makemore import config as config_mod
from makemore.errors import MakemoreError
from makemore.runs.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_META,
    CHECKPOINT_METADATA_KEY,
    METRICS_FILE,
    RUN_FILE,
    WEIGHTS_FILE,
    build_from_spec,
    load_model,
    read_json,
    read_run_spec,
)

DATA_KEYS = ("source", "builtin", "sha256", "mode", "mode_reason", "sizes", "chars", "split", "seed", "window")
DATA_KEYS += ("labels", "label_counts", "label_mode")  # labelled runs


def describe_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's description: {"run", "model", "model_config", "parameters", "stored_values", "vocab_size",
    "closed_form", "steps", "max_steps", "best_val_loss", "best_step", "data"; for n-grams "order" (the order in
    use) and "fitted" (what fitting chose, when run.json records it); for a mix "mix" (its members and weights)}.
    Facts a run does not have yet (no evaluation so far) are None."""
    run_dir = Path(run_dir)
    spec = read_run_spec(run_dir)
    raw = read_json(run_dir / RUN_FILE)
    model = _model(run_dir, spec)
    progress = _progress(run_dir)
    closed_form = not getattr(model, "trainable", True)  # fitted in one go (counts), not trained in steps
    info: dict[str, Any] = {
        "run": str(run_dir),
        "model": spec.model_name,
        "model_config": config_mod.to_dict(spec.model_config),
        "parameters": model.parameter_count(),
        "stored_values": sum(tensor.numel() for tensor in model.state_dict().values()),  # counts hold no parameters
        "vocab_size": spec.vocab.size,
        "closed_form": closed_form,
        "steps": progress["steps"],
        "max_steps": None if closed_form else spec.train_config.get("max_steps"),
        "schedule_steps": progress.get("schedule_steps"),  # a time budget's schedule, as a step count
        "best_val_loss": progress["best_val"],
        "best_step": progress["best_step"],
        "data": {key: spec.data[key] for key in DATA_KEYS if key in spec.data},
    }
    fitted = raw.get("fitted") if isinstance(raw.get("fitted"), dict) else None
    if fitted is not None:
        info["fitted"] = fitted
    if "order" in info["model_config"]:
        info["order"] = _order(fitted, info["model_config"], model)
    if isinstance(spec.data.get("auto"), dict):
        info["auto"] = spec.data["auto"]  # --model auto: the plan's members, their val NLL, weights and time
    if isinstance(spec.data.get("mix"), dict):
        info["mix"] = spec.data["mix"]
        if info["best_val_loss"] is None and isinstance(info["mix"].get("val_nll"), float):
            info["best_val_loss"] = info["mix"]["val_nll"]  # a mix logs nothing: its fit recorded the val loss
    if isinstance(spec.data.get("knn"), dict):
        info["knn"] = spec.data["knn"]
        if info["best_val_loss"] is None and isinstance(info["knn"].get("val_nll"), float):
            info["best_val_loss"] = info["knn"]["val_nll"]  # a knn run logs nothing either
    return info


def _model(run_dir: Path, spec: Any) -> Any:
    """The run's model with its weights (a count model's fitted order lives in them); a run that has not saved
    weights yet is described from its config alone."""
    if (run_dir / WEIGHTS_FILE).exists():
        return load_model(run_dir)[1]
    return build_from_spec(spec, str(run_dir / RUN_FILE), run_dir)


def _order(fitted: dict[str, Any] | None, model_config: dict[str, Any], model: Any) -> int:
    """The n-gram order in use: what fitting recorded in run.json, else what the fitted weights say, else the
    configured order (0 is --order auto before fitting)."""
    if fitted is not None and isinstance(fitted.get("order"), int):
        return fitted["order"]
    order = getattr(model, "order", None)
    if isinstance(order, int) and model_config["order"] == 0:
        return order
    return model_config["order"]


def _progress(run_dir: Path) -> dict[str, Any]:
    """Steps trained and the best val loss: from the checkpoint's state when there is one (trained runs), else from
    the log's eval lines (a count model, fitted in one go, has no checkpoint)."""
    state = _checkpoint_state(run_dir)
    if state is not None:
        best = state.get("best_val")
        known = isinstance(best, (int, float)) and math.isfinite(best) and state.get("best_step", -1) >= 0
        schedule = state.get("schedule_steps")
        return {
            "steps": state.get("step"),
            # a time budget, fixed as a step count after the first steps: `--max-steps` with it repeats the run
            "schedule_steps": schedule if isinstance(schedule, int) and schedule > 0 else None,
            "best_val": best if known else None,
            "best_step": state.get("best_step") if known else None,
        }
    return _progress_from_log(run_dir / METRICS_FILE)


def _checkpoint_state(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's JSON training state, read from the safetensors header without loading its tensors."""
    path = run_dir / CHECKPOINT_FILE
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
            meta = json.loads(header[CHECKPOINT_METADATA_KEY]) if CHECKPOINT_METADATA_KEY in header else None
        except (SafetensorError, OSError, ValueError) as error:
            raise MakemoreError(f"{path}: not a valid checkpoint ({str(error).splitlines()[0]})") from None
    elif (run_dir / CHECKPOINT_META).exists():  # an older run kept the state beside the weights
        meta = read_json(run_dir / CHECKPOINT_META)
    else:
        return None
    state = meta.get("state") if isinstance(meta, dict) else None
    return state if isinstance(state, dict) else None


def _progress_from_log(path: Path) -> dict[str, Any]:
    steps, best_val, best_step = None, None, None
    if not path.exists():
        return {"steps": None, "best_val": None, "best_step": None}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill: the log is data, never trusted
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            continue
        steps = max(steps or 0, record["step"])
        val = record.get("val_loss") if record.get("event") == "eval" else None
        if isinstance(val, (int, float)) and math.isfinite(val) and (best_val is None or val < best_val):
            best_val, best_step = float(val), record["step"]
    return {"steps": steps, "best_val": best_val, "best_step": best_step}


__all__ = ["describe_run"]
