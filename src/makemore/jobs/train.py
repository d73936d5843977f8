"""`makemore.train`: everything `makemore train` does, as one function the CLI and Python callers share.

    import makemore
    result = makemore.train("names.txt", model="transformer", out="runs/names-tf", max_steps=2000, lr=3e-3)
    result["val"]["nll"], result["samples"][:3]
    makemore.train(resume="runs/names-tf", max_steps=4000)   # continue where it stopped

It prints nothing: what a user would want to see while it runs arrives through `on_event` (dicts: "info" lines,
"start", the trainer's "train" / "eval" / "warning"); the outcome is the returned dict. Rank 0 alone reports under
torchrun. `should_stop()` is asked between steps (a first Ctrl-C); a closed-form fit has no steps, so a caller
that wants to stop one interrupts it (KeyboardInterrupt), and the run directory is left as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from makemore import config as config_mod
from makemore.data.lines import BUILTIN_DATASETS, DEFAULT_DATASET
from makemore.errors import MakemoreError
from makemore.jobs import auto
from makemore.jobs.lr_find import describe, rounded_suggestion, run_lr_find
from makemore.jobs.train_data import Data, DataOptions, describe_data, load_data, load_splits, reload_data
from makemore.jobs.train_labels import write_run_labels
from makemore.jobs.train_results import finish, nothing_to_do
from makemore.jobs.train_settings import (
    fitted_settings,
    fresh_configs,
    model_train_defaults,
    resumed_config,
    torch_threads,
    trainable_model_name,
    with_flag_names,
)
from makemore.models import MODELS, LanguageModel, build_model
from makemore.models.labels import default_label_mode
from makemore.runs import checkpoint as ckpt
from makemore.runs import create as run_dirs
from makemore.runs.lock import RunLock, remove_stale_temp_files
from makemore.training import distributed
from makemore.training.config import TrainConfig
from makemore.training.devices import resolve_device
from makemore.training.trainer import Trainer

__all__ = ["train", "load_splits", "model_train_defaults", "default_run_dir"]

MAX_SAMPLES = 100_000
# Labelled runs average their weights unless told otherwise: the classifier needs calibrated p(item | label), and the
# averaged GRU kept it whatever the schedule's length (first names by sex, val accuracy: 0.9296 / 0.9255 in 1,550 /
# 6,000-step schedules with it, 0.9027 / 0.9130 in 3,154 / 6,000 without; benchmarks/results/labels.md)
LABELLED_EMA = 0.999


class Events:
    """The caller's `on_event`, on rank 0 only (rank 0 speaks for all)."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None] | None):
        self.on_event = on_event
        self.muted = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.on_event is not None and not self.muted:
            self.on_event(event)

    def info(self, message: str) -> None:
        self({"event": "info", "message": message})


def train(
    input: str | Path | None = None,
    model: str | None = None,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    preset: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
    split: str | None = None,
    mode: str = "auto",
    max_item_len: int = 256,
    seq_len: int | None = None,
    stateful: bool = False,
    dev_fraction: float = 0.0,
    labelled: bool = False,
    label_mode: str | None = None,
    force: bool = False,
    samples: int = 20,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train `model` on `input` (a text file or a built-in dataset) into the run directory `out`, or continue the
    run `resume`. `settings`: any training or model setting by name (`lr=3e-3`, `n_embd=64`, `order="auto"`,
    `lr="auto"` for the learning-rate finder); an unknown name is a MakemoreError naming its flag.
    `labelled=True`: label<TAB>item lines, or a list of files whose stems are their labels (data/labels.py);
    `label_mode`: add, concat or state (models/labels.py).

    Returns: run_dir, model, stopped (max_steps, time_budget, early_stopping, fitted, interrupted), step,
    max_steps, elapsed, best_val, best_step, val (nll, bpc, ppl, tokens; None if interrupted or nothing was done),
    samples (line mode: [{item, status}]), sample_text (stream mode), fitted (what "auto" settings chose, e.g.
    {"order": 7}; also in run.json), lr, resumed_from, message (set when a resumed run had nothing left to do: one
    line saying so), is_main (False on the other ranks under torchrun, which return no results)."""
    if type(samples) is not int or not 0 <= samples <= MAX_SAMPLES:
        raise MakemoreError(f"--samples must be in 0..{MAX_SAMPLES}, got {samples!r}")
    dry_run = settings.pop("dry_run", False)
    if model == auto.AUTO_MODEL or (resume is not None and auto.is_auto_run(resume)) or dry_run:
        given = {"input": input, "model": model, "out": out, "resume": resume, "preset": preset, "force": force}
        given |= {"val_file": val_file, "test_file": test_file, "split": split, "mode": mode, "seq_len": seq_len}
        given |= {"max_item_len": max_item_len, "stateful": stateful, "dev_fraction": dev_fraction}
        given |= {"samples": samples, "labelled": labelled, "label_mode": label_mode}
        return train_auto(given, dry_run, on_event, should_stop, settings)
    events = Events(on_event)
    if resume is not None:
        given = {"--input": input, "--out": out, "--preset": preset, "--val-file": val_file}
        given |= {"--test-file": test_file, "--split": split, "--seq-len": seq_len}
        given |= {"--stateful": stateful or None, "--dev-fraction": dev_fraction or None, "--force": force or None}
        given |= {"--mode": None if mode == "auto" else mode}
        given |= {"--labelled": labelled or None, "--label-mode": label_mode}
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise MakemoreError(f"{', '.join(extra)}: for a fresh run; a resumed run keeps its data and settings")
        return resume_run(Path(resume), model, samples, events, should_stop, settings)
    inputs, input = ([str(path) for path in input], input[0]) if isinstance(input, (list, tuple)) else (None, input)
    source = DEFAULT_DATASET if input is None else str(input)
    options = DataOptions(source, val_file, test_file, split, max_item_len, mode, seq_len)
    options.stateful, options.dev_fraction = stateful, dev_fraction
    options.labelled, options.label_mode = labelled, label_mode
    options.inputs = inputs if len(inputs or []) > 1 else None  # several -i: one file per label
    name = trainable_model_name(model)
    run_dir = Path(out) if out is not None else default_run_dir(options.input, name)
    return new_run(options, name, run_dir, preset, force, samples, events, should_stop, settings)


def train_auto(
    given: dict[str, Any],
    dry_run: bool,
    on_event: Callable[[dict[str, Any]], None] | None,
    should_stop: Callable[[], bool] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """`model="auto"` (and the resume of such a run): the plan of jobs/auto.py, whose members are trained by this
    module's `train`."""
    if given["model"] not in (None, auto.AUTO_MODEL):
        raise MakemoreError(f"--dry-run shows the plan of --model auto, not of --model {given['model']}")
    if given["resume"] is not None:
        if given["input"] is not None or given["out"] is not None:
            raise MakemoreError("--input, --out: for a fresh run; a resumed run keeps its data and settings")
        if settings:
            raise MakemoreError(f"{', '.join(settings)}: a resumed --model auto run keeps its plan and settings")
        return auto.train_auto(train, DataOptions(), None, resume=Path(given["resume"]), samples=given["samples"],
                               on_event=on_event, should_stop=should_stop)  # fmt: skip
    chosen = {"--seq-len": given["seq_len"], "--stateful": given["stateful"] or None, "--preset": given["preset"]}
    chosen |= {"--dev-fraction": given["dev_fraction"] or None}
    if any(value is not None for value in chosen.values()):
        flags = ", ".join(flag for flag, value in chosen.items() if value is not None)
        raise MakemoreError(f"{flags}: --model auto chooses the models' settings; pick a --model to set them")
    input, inputs = given["input"], None
    if isinstance(input, (list, tuple)):  # -i repeated: one file per label (--labelled)
        inputs, input = ([str(path) for path in input] if len(input) > 1 else None), input[0]
    source = DEFAULT_DATASET if input is None else str(input)
    options = DataOptions(source, given["val_file"], given["test_file"], given["split"], given["max_item_len"],
                          given["mode"])  # fmt: skip
    options.labelled, options.label_mode, options.inputs = given["labelled"], given["label_mode"], inputs
    out = Path(given["out"]) if given["out"] is not None else None
    return auto.train_auto(
        train, options, out, force=given["force"], dry_run=dry_run, samples=given["samples"], on_event=on_event,
        should_stop=should_stop, settings=settings,
    )  # fmt: skip


def default_run_dir(input: str, model_name: str) -> Path:
    stem = input if input in BUILTIN_DATASETS else Path(input).stem
    return Path("runs") / f"{stem}-{model_name}"


# ------------------------------------------------------------------------------------------------------ new runs


def new_run(
    options: DataOptions,
    model_name: str,
    run_dir: Path,
    preset: str | None,
    force: bool,
    samples: int,
    events: Events,
    should_stop: Callable[[], bool] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    train_config, model_config, lr_auto = fresh_configs(model_name, preset, settings)
    events.muted = not distributed.setup(resolve_device(train_config.device)).is_main
    distributed.run_on_main(lambda: run_dirs.check_free(run_dir, force))  # before any work
    with torch_threads(train_config.threads):
        data = load_data(options, model_config, train_config.seed)
        torch.manual_seed(train_config.seed)
        model = build(model_name, model_config, data.vocab.size, data.info)
        splits = data.splits(model, str(run_dir / ckpt.RUN_FILE))
        if data.stream and data.info["stateful"] and not model.carries_state:
            raise MakemoreError(f"--stateful: {model_name} does not carry state between windows; drop --stateful")
        announce(events, data, splits, model_name, model_config, model)
        if data.labels and model.trainable and "ema" not in settings and not train_config.ema:
            train_config = config_mod.replace(train_config, ema=LABELLED_EMA)
            events.info(f"--labelled: weights averaged (--ema {LABELLED_EMA}; give --ema 0 to turn it off)")
        if lr_auto:  # a fresh model of the same kind sweeps the lr on the train split; this one stays untouched
            train_config = auto_lr(events, model_name, model_config, data, splits["train"], train_config)
        spec = ckpt.RunSpec(model_name, model_config, config_mod.to_dict(train_config), data.vocab, data.info)
        job = NewRun(model, data, splits, spec, train_config, run_dir, force, samples, events)
        return train_network(job, should_stop) if model.trainable else fit_count_model(job)


def build(model_name: str, model_config: Any, vocab_size: int, data_info: dict | None = None) -> LanguageModel:
    labels = (data_info or {}).get("labels", [])
    if labels and data_info.get("label_mode") is None:  # a new labelled run: the family's default, recorded
        data_info["label_mode"] = default_label_mode(model_name)
    mode = (data_info or {}).get("label_mode", "add")
    try:
        return build_model(model_name, model_config, vocab_size, n_labels=len(labels), label_mode=mode)
    except ValueError as error:
        message = with_flag_names(str(error), MODELS[model_name].config_class)
        raise MakemoreError(f"--model {model_name}: {message}") from None


def announce(
    events: Events, data: Data, splits: dict[str, Any], model_name: str, model_config: Any, model: LanguageModel
) -> None:
    for line in describe_data(data, splits):
        events.info(line)
    events.info(f"model: {model_name} {json.dumps(config_mod.to_dict(model_config))}")
    events.info(f"parameters: {model.parameter_count():,}")


def auto_lr(
    events: Events, model_name: str, model_config: Any, data: Data, train_split: Any, train_config: TrainConfig
) -> TrainConfig:
    """lr="auto": the learning-rate finder's suggestion, swept with the run's own training settings."""
    if data.labels:
        raise MakemoreError("--lr auto: the learning-rate finder does not take --labelled data; give --lr")
    result = run_lr_find(model_name, model_config, data.vocab, train_split, train_config)
    lr = rounded_suggestion(result)
    events.info(describe(result))
    events.info(f"--lr auto: training with lr {lr:g}")
    return config_mod.replace(train_config, lr=lr)


def write_new_run(work: Path, data: Data, run_json: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> None:
    """A run's files in `work`, run.json last (what marks a run complete)."""
    if not data.stream:  # a stream run records the file's path, sha256 and offsets instead of a copy
        ckpt.write_split_items(work, data.items)
        write_run_labels(work, data.labels)
    if weights is not None:
        ckpt.save_tensors(work / ckpt.WEIGHTS_FILE, weights)
    ckpt.write_json(work / ckpt.RUN_FILE, run_json)


@dataclass
class NewRun:
    """What a new run is made of, from the data and settings to where it goes and who hears about it."""

    model: LanguageModel
    data: Data
    splits: dict[str, Any]
    spec: ckpt.RunSpec
    config: TrainConfig
    run_dir: Path
    force: bool
    samples: int
    events: Events


def train_network(job: NewRun, should_stop: Callable[[], bool] | None) -> dict[str, Any]:
    """A neural run is published with its initial weights (loadable from the start), then trains in place; a
    failure before its first checkpoint removes it again (nothing to resume)."""
    model, data, splits, spec, config = job.model, job.data, job.splits, job.spec, job.config
    run_dir, force, samples, events = job.run_dir, job.force, job.samples, job.events
    trainer = Trainer(model, splits, config, run_dir, on_event=events, should_stop=should_stop)
    events.info(f"device: {device_summary(trainer)}; run directory: {run_dir}")
    created = [False]

    def create() -> None:
        with run_dirs.partial(run_dir) as work:
            write_new_run(work, data, spec.to_json(), model.state_dict())
            created[0] = run_dirs.publish(work, run_dir, force)

    distributed.run_on_main(create)  # rank 0 creates the run; if it cannot, every rank stops
    locked = False
    try:
        with contextlib.ExitStack() as held:
            distributed.run_on_main(lambda: lock(run_dir, held, events))
            locked = True  # (had another process taken the new run meanwhile, it would not be ours to discard)
            events({"event": "start", "step": 0, "max_steps": config.max_steps, "steps": True})
            result = trainer.train()
            return finish(trainer, data, splits, spec, result, run_dir, samples, {}, None, events)
    except BaseException:
        if locked and trainer.dist.is_main and not (run_dir / ckpt.CHECKPOINT_FILE).exists():
            run_dirs.discard(run_dir, created[0])  # (after the lock's release)
        raise


def fit_count_model(job: NewRun) -> dict[str, Any]:
    """A count model is fitted in a hidden sibling and published once fitted: an interrupted or failed fit leaves
    nothing behind."""
    model, data, splits, spec, config = job.model, job.data, job.splits, job.spec, job.config
    run_dir, force, samples, events = job.run_dir, job.force, job.samples, job.events
    is_main = distributed.current().is_main  # (the other ranks fit too, but write nothing)
    with run_dirs.partial(run_dir) if is_main else contextlib.nullcontext(run_dir) as work:
        trainer = Trainer(model, splits, config, work, on_event=events)
        events.info(f"device: {device_summary(trainer)}; run directory: {run_dir}")
        events({"event": "start", "step": 0, "max_steps": config.max_steps, "steps": False})
        result = trainer.train()
        fitted = fitted_settings(model, spec.model_config)

        def create() -> None:
            write_new_run(work, data, {**spec.to_json(), "fitted": fitted}, None)  # the weights are there
            run_dirs.publish(work, run_dir, force)

        distributed.run_on_main(create)
    with contextlib.ExitStack() as held:
        distributed.run_on_main(lambda: lock(run_dir, held, events))
        return finish(trainer, data, splits, spec, result, run_dir, samples, fitted, None, events)


def lock(run_dir: Path, held: contextlib.ExitStack, events: Events) -> None:
    """Hold the run directory's lock until `held` closes (a second process refuses), then clear temp files that a
    killed writer left behind."""
    taken = held.enter_context(RunLock(run_dir))
    if getattr(taken, "took_over", None):
        events.info(f"run directory lock: taken over from {taken.took_over} (no longer running)")
    remove_stale_temp_files(run_dir)


def device_summary(trainer: Trainer) -> str:
    """E.g. "cuda:0 (auto), bf16, compiled; 4 ranks (nccl), global batch 64 = 16 per rank"."""
    config = trainer.config
    parts = [f"{trainer.device}" + (" (auto)" if config.device == "auto" else "")]
    if config.dtype != "fp32":
        parts.append(config.dtype + (" with a gradient scaler" if trainer.scaler is not None else ""))
    if config.compile:
        parts.append("compiled" if trainer.train_forward is not trainer.eager_forward else "not compiled")
    text = ", ".join(parts)
    dist_info = trainer.dist
    if dist_info.enabled:
        low, high = trainer.global_batch // dist_info.world_size, -(-trainer.global_batch // dist_info.world_size)
        text += (
            f"; {dist_info.world_size} ranks ({dist_info.backend}), "
            f"global batch {trainer.global_batch} = {low if low == high else f'{low}-{high}'} per rank"
        )
    return text


# -------------------------------------------------------------------------------------------------------- resume


def resume_run(
    run_dir: Path,
    model_name: str | None,
    samples: int,
    events: Events,
    should_stop: Callable[[], bool] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    spec = ckpt.read_run_spec(run_dir)
    if model_name is not None and model_name != spec.model_name:
        raise MakemoreError(f"--model {model_name}: {run_dir} is a {spec.model_name} run")
    trainable_model_name(spec.model_name)
    where = f"{run_dir / ckpt.RUN_FILE}: train_config"
    config = resumed_config(spec.model_name, spec.train_config, settings, where)
    events.muted = not distributed.setup(resolve_device(config.device)).is_main
    with contextlib.ExitStack() as held:
        distributed.run_on_main(lambda: lock(run_dir, held, events))  # if rank 0 cannot lock, every rank stops
        saved = saved_state(run_dir)
        config, limits_changed = new_limits(config, spec, set(settings), saved, events)
        done = nothing_to_do(run_dir, spec, config, saved, limits_changed)
        if done is not None:
            return done
        with torch_threads(config.threads):
            return continue_training(run_dir, spec, config, limits_changed, samples, events, should_stop)


def continue_training(
    run_dir: Path,
    spec: ckpt.RunSpec,
    config: TrainConfig,
    limits_changed: bool,
    samples: int,
    events: Events,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    data = reload_data(run_dir, spec)
    torch.manual_seed(config.seed)
    model = build(spec.model_name, spec.model_config, spec.vocab.size, spec.data)
    splits = data.splits(model, str(run_dir / ckpt.RUN_FILE))
    announce(events, data, splits, spec.model_name, spec.model_config, model)
    trainer = Trainer(model, splits, config, run_dir, on_event=events, should_stop=should_stop)
    events.info(f"device: {device_summary(trainer)}; run directory: {run_dir}")
    if not trainer.restore():
        events.info("no checkpoint yet (stopped before the first one): starting over from step 0")
    if limits_changed and hasattr(trainer.state, "schedule_steps"):
        trainer.state.schedule_steps = 0  # the schedule's length follows the new limits (fixed again if timed)
    spec.train_config = config_mod.to_dict(config)
    if trainer.dist.is_main:
        ckpt.write_json(run_dir / ckpt.RUN_FILE, {**read_run_json(run_dir), **spec.to_json()})  # the new limits
    resumed_from = trainer.state.step
    events.info(f"resuming at step {resumed_from} of {config.max_steps}")
    events({"event": "start", "step": resumed_from, "max_steps": config.max_steps, "steps": model.trainable})
    result = trainer.train()
    fitted = read_run_json(run_dir).get("fitted", {})
    return finish(trainer, data, splits, spec, result, run_dir, samples, fitted, resumed_from, events)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """run.json as it is (keeps entries RunSpec does not model, e.g. "fitted")."""
    raw = ckpt.read_json(run_dir / ckpt.RUN_FILE)
    return raw if isinstance(raw, dict) else {}


def saved_state(run_dir: Path) -> dict[str, Any] | None:
    """The training state of the run's checkpoint (step, elapsed, ...), read from its header alone; None without
    one (or with one that cannot be read: restoring it then says why)."""
    path = run_dir / ckpt.CHECKPOINT_FILE
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(min(size, ckpt.MAX_SAFETENSORS_HEADER)).decode("utf-8"))
        meta = header.get("__metadata__", {}).get(ckpt.CHECKPOINT_METADATA_KEY)
        state = json.loads(meta)["state"] if meta else ckpt.read_json(run_dir / ckpt.CHECKPOINT_META)["state"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, MakemoreError):
        return None
    if not isinstance(state, dict):
        return None
    # only numbers are trusted here: restoring the checkpoint checks it fully and reports what is wrong
    return {k: v for k, v in state.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def new_limits(
    config: TrainConfig, spec: ckpt.RunSpec, given: set[str], saved: dict[str, Any] | None, events: Events
) -> tuple[TrainConfig, bool]:
    """The limits a resumed run trains to, and whether they differ from run.json's. `--time-budget T` is the
    total budget. A --max-steps given alone is the limit: a time budget recorded in run.json no longer applies
    (give both to keep one)."""
    recorded = spec.train_config
    if "max_steps" in given and "time_budget" not in given and config.time_budget is not None:
        if saved is None or config.max_steps > saved.get("step", 0):  # (else: nothing left to do, said later)
            events.info(
                f"--max-steps {config.max_steps} without --time-budget: training on to step {config.max_steps} "
                f"(the run's time budget of {config.time_budget:g}s no longer applies)"
            )
        config = config_mod.replace(config, time_budget=None)
    changed = config.max_steps != recorded.get("max_steps") or config.time_budget != recorded.get("time_budget")
    return config, changed
