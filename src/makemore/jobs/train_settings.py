"""The settings of a training run, checked in one place for the CLI and the Python API: any `TrainConfig` or model
config field by name (`lr=3e-3`, `n_embd=64`, `order="auto"`), over a model's defaults and an optional preset.

Errors name the flag a CLI user would type (`--lr`), which is also the name an API user looks up in `--help`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Iterator
from typing import Any

import torch

from makemore import config as config_mod
from makemore.errors import MakemoreError
from makemore.models import DEFAULT_MODEL, MODELS
from makemore.training.config import TrainConfig
from makemore.training.devices import resolve_device

AUTO = "auto"  # lr="auto": run the learning-rate finder first


def model_train_defaults(model_name: str) -> TrainConfig:
    return config_mod.replace(TrainConfig(), **MODELS[model_name].train_defaults)


def trainable_model_name(name: str | None) -> str:
    """The model to train (None: the default); a one-line error for unknown models and those made by other commands."""
    name = DEFAULT_MODEL if name is None else name
    if name not in MODELS:
        raise MakemoreError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    if MODELS[name].made_by:
        raise MakemoreError(f"--model {name} is not trained but made from runs: {MODELS[name].made_by}")
    return name


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def split_settings(model_name: str, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training settings, model settings) by name; an unknown name is an error naming its flag."""
    train_names, model_names = field_names(TrainConfig), field_names(MODELS[model_name].config_class)
    train: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for name, value in settings.items():
        if name in train_names:
            train[name] = value
        elif name in model_names:
            model[name] = value
        else:
            close = difflib.get_close_matches(name, train_names + model_names, n=1)
            hint = f" (did you mean {config_mod.flag_name(close[0])}?)" if close else ""
            raise MakemoreError(f"unknown setting {config_mod.flag_name(name)} for --model {model_name}{hint}")
    return train, model


def checked_value(cls: type, name: str, value: Any) -> Any:
    """A setting's value as its field holds it: the field's special words (`order="auto"`) become their values; a
    value of the wrong type is an error naming the flag. (The CLI's flags arrive typed already.)"""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind = typing.get_type_hints(cls)[name]
    optional = type(None) in typing.get_args(kind)
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    names = field.metadata.get("names") or {}
    if isinstance(value, str) and value.lower() in names:
        return names[value.lower()]
    if value is None and optional:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    flag = config_mod.flag_name(name)
    if not ok:
        raise MakemoreError(f"{flag} expects {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise MakemoreError(f"{flag} must be finite, got {value!r}")
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise MakemoreError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def with_flag_names(message: str, cls: type) -> str:
    """A config check's message with field names as flags: "n_embd must be ..." -> "--n-embd must be ..."."""
    names = set(field_names(cls))

    def as_flag(match: re.Match) -> str:
        word = match.group(0)
        at_start = match.start() == 0
        return config_mod.flag_name(word) if word in names and ("_" in word or at_start) else word

    return re.sub(r"(?<![-\w])[a-z][a-z0-9_]*", as_flag, message)


def apply(cls: type, base: Any, changes: dict[str, Any]) -> Any:
    """`base` with `changes`, each checked; a failed config check is a one-line error naming flags."""
    checked = {name: checked_value(cls, name, value) for name, value in changes.items()}
    try:
        return dataclasses.replace(base, **checked)
    except (TypeError, ValueError) as error:
        raise MakemoreError(with_flag_names(str(error), cls)) from None


def take_auto_lr(train_settings: dict[str, Any]) -> bool:
    """Remove lr="auto" from the settings; True when it was there."""
    if isinstance(train_settings.get("lr"), str) and train_settings["lr"].lower() == AUTO:
        del train_settings["lr"]
        return True
    return False


def fresh_configs(model_name: str, preset: str | None, settings: dict[str, Any]) -> tuple[TrainConfig, Any, bool]:
    """(training config, model config, whether lr="auto") of a new run: the model's defaults, then the preset,
    then the settings given."""
    train, model = split_settings(model_name, settings)
    lr_auto = take_auto_lr(train)
    spec = MODELS[model_name]
    train_base, model_base = model_train_defaults(model_name), spec.config_class()
    if preset is not None:
        if preset not in spec.presets:
            known = ", ".join(sorted(spec.presets)) or "none"
            raise MakemoreError(f"--preset {preset}: {model_name} has no such preset (presets: {known})")
        train_base = apply(TrainConfig, train_base, spec.presets[preset].train)
        model_base = apply(spec.config_class, model_base, spec.presets[preset].model)
    if "max_steps" in train and "time_budget" not in train:
        # a step count given alone is the limit: the recommended time budget would make the run's length (and so
        # its schedule and numbers) depend on the machine's speed
        train_base = apply(TrainConfig, train_base, {"time_budget": None})
    config = apply(TrainConfig, train_base, train)
    if "row_shards" not in train and config.row_shards > 1 and not cpu_threads_run(config):
        config = apply(TrainConfig, config, {"row_shards": 1})  # a recommendation for one CPU process only
    return config, apply(spec.config_class, model_base, model), lr_auto


def cpu_threads_run(config: TrainConfig) -> bool:
    """Whether a run trains in one CPU process, eagerly, without fp16's scaler: where row shards apply. A model's
    recommended shards are dropped elsewhere (a GPU, torchrun, --compile), so run.json records what ran."""
    single = int(os.environ.get("WORLD_SIZE", "1")) <= 1
    return single and resolve_device(config.device).type == "cpu" and not config.compile and config.dtype != "fp16"


def resumed_config(model_name: str, recorded: dict[str, Any], settings: dict[str, Any], where: str) -> TrainConfig:
    """The training config of a resumed run: run.json's, with the training settings given (new limits, a new lr).
    Model settings cannot change, nor can the lr be found again."""
    train, model = split_settings(model_name, settings)
    if model:
        flags = ", ".join(config_mod.flag_name(name) for name in model)
        raise MakemoreError(f"cannot change model settings when resuming ({flags})")
    if take_auto_lr(train):
        raise MakemoreError("--lr auto is for a fresh run; give a number to change the lr of a resumed run")
    return apply(TrainConfig, config_mod.from_dict(TrainConfig, recorded, where), train)


def fitted_settings(model: Any, model_config: Any) -> dict[str, Any]:
    """What the model chose itself for settings that take "auto" (e.g. an n-gram's order), as fitted: the
    configured value where one was given. run.json records this as "fitted"."""
    fitted = {}
    for f in dataclasses.fields(model_config):
        if AUTO in (f.metadata.get("names") or {}) and isinstance(getattr(model, f.name, None), int):
            fitted[f.name] = getattr(model, f.name)
    return fitted


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's CPU threads for the duration (0: leave them as they are), restored after: an API caller's
    process keeps its own setting."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)
