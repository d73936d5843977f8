"""`makemore lr-find` (the learning-rate range test, plotted) and `train --lr auto`'s flag handling."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from makemore import config as config_mod
from makemore.cli.common import Parser
from makemore.errors import MakemoreError
from makemore.jobs.lr_find import describe, sweep_file
from makemore.jobs.train_settings import model_train_defaults
from makemore.models import DEFAULT_MODEL, MODELS
from makemore.training.config import TrainConfig

# training flags that mean nothing to a sweep of a few hundred steps at a growing lr
SWEEP_SKIPS = {"lr", "max_steps", "time_budget", "schedule", "warmup_steps", "min_lr_ratio", "step_decay_at"}
SWEEP_SKIPS |= {"eval_every", "eval_batch_size", "patience", "log_every", "diagnostics", "tensorboard"}
SWEEP_OPTIONS = ("input", "split", "max_item_len", "min_lr", "max_lr", "steps")


def build_lr_find_parser(model_name: str) -> Parser:
    from makemore.cli.plot import _add_output_flags

    parser = Parser(
        prog="makemore lr-find",
        description="Learning-rate range test (Smith 2017): train a fresh model for a few hundred steps with the "
        "learning rate growing exponentially, plot loss against learning rate, and suggest one: half the learning "
        "rate at which the smoothed loss is lowest. Training flags (optimizer, batch size, ...) are those of `train`.",
    )
    parser.add_argument("-i", "--input", default="first-names", help="a text file or a built-in dataset")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions; the sweep uses train")
    parser.add_argument("--max-item-len", type=int, default=256)
    parser.add_argument("--model", default=model_name, choices=sorted(MODELS))
    parser.add_argument("--min-lr", type=float, default=1e-5, help="first learning rate (default: 1e-5)")
    parser.add_argument("--max-lr", type=float, default=10.0, help="last learning rate (default: 10)")
    parser.add_argument("--steps", type=int, default=300, help="sweep length in steps (default: 300)")
    _add_output_flags(parser, "lr-find-<model>.<format> in the current directory")
    _add_flags_except(parser.add_argument_group("training"), TrainConfig, model_train_defaults(model_name), SWEEP_SKIPS)
    config_mod.add_flags(parser.add_argument_group(f"model {model_name!r}"), MODELS[model_name].config_class)
    return parser


def cmd_lr_find(argv: list[str]) -> int:
    from makemore.cli.plot import _output, _save
    from makemore.insight.plots import plot_lr_find

    pre = Parser(prog="makemore lr-find", add_help=False)  # --model decides the model flags of the full parser
    pre.add_argument("--model", default=DEFAULT_MODEL)
    known, _ = pre.parse_known_args(argv)
    if known.model not in MODELS:
        raise MakemoreError(f"unknown model {known.model!r}; choose from {', '.join(sorted(MODELS))}")
    args = build_lr_find_parser(known.model).parse_args(argv)
    settings = given_settings(args, known.model)
    sweep = {name: getattr(args, name) for name in SWEEP_OPTIONS}
    result, info = sweep_file(model=known.model, **sweep, **settings)
    print(describe(result))
    path, fmt = _output(args, Path(f"lr-find-{known.model}"))
    title = f"Learning-rate finder: {known.model} on {Path(info['source']).name}"
    return _save(plot_lr_find(result, title, args.dpi), path, fmt)


def given_settings(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """The training and model flags given (those not given are absent from the namespace)."""
    names = [f.name for cls in (TrainConfig, MODELS[model_name].config_class) for f in dataclasses.fields(cls)]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _add_flags_except(group: Any, cls: type, base: Any, skip: set[str]) -> None:
    """config.add_flags for all fields of `cls` but `skip` (flags that make no sense for a sweep)."""
    probe = argparse.ArgumentParser(add_help=False)
    config_mod.add_flags(probe, cls, base)
    for action in probe._actions:
        if action.dest not in skip:
            group._add_action(action)


def take_lr_auto(argv: list[str]) -> tuple[list[str], bool]:
    """Remove `--lr auto` / `--lr=auto` from train's arguments; True when it was there."""
    out: list[str] = []
    auto = False
    i = 0
    while i < len(argv):
        if argv[i] == "--lr" and i + 1 < len(argv) and argv[i + 1].lower() == "auto":
            auto, i = True, i + 2
            continue
        if argv[i].lower() == "--lr=auto":
            auto = True
        else:
            out.append(argv[i])
        i += 1
    return out, auto
