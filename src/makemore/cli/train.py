"""`makemore train`: parse the flags, call `makemore.jobs.train.train`, print what it reports."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from makemore import config as config_mod
from makemore.cli.common import Parser, StopFlag, progress_printer
from makemore.cli.lr_find import take_lr_auto
from makemore.data.corpus import MODES
from makemore.data.lines import BUILTIN_DATASETS, DEFAULT_DATASET
from makemore.data.stream import DEFAULT_WINDOW
from makemore.errors import MakemoreError
from makemore.jobs import train as launch
from makemore.jobs.train_settings import model_train_defaults
from makemore.models import DEFAULT_MODEL, MODELS
from makemore.runs import checkpoint as ckpt
from makemore.training.config import TrainConfig

SUPPRESS = argparse.SUPPRESS  # flags not given are not passed on: the library's defaults apply


def build_train_parser(model_name: str, resume_spec: ckpt.RunSpec | None) -> Parser:
    parser = Parser(prog="makemore train", description="Train a model on a text file (one item per line).")
    data = parser.add_argument_group("data")
    data.add_argument(
        "-i",
        "--input",
        default=SUPPRESS,
        help=f"a UTF-8 text file, or a built-in dataset ({', '.join(BUILTIN_DATASETS)}); default: {DEFAULT_DATASET}",
    )
    data.add_argument("--val-file", default=SUPPRESS, help="explicit val split (--split then cuts train/test)")
    data.add_argument("--test-file", default=SUPPRESS, help="explicit test split")
    data.add_argument(
        "--split",
        default=SUPPRESS,
        help="train,val,test fractions (default: 0.8,0.1,0.1 shuffled items in line mode; 0.9,0.1,0 in stream mode, "
        "where val is the last part of the text and test the part before it)",
    )
    data.add_argument("--max-item-len", type=int, default=SUPPRESS, help="refuse longer lines (default: 256)")
    data.add_argument(
        "--mode",
        default=SUPPRESS,
        choices=MODES,
        help="line: one item per line; stream: one continuous text; auto: decide from the file (default: auto)",
    )
    data.add_argument(
        "--seq-len",
        type=int,
        default=SUPPRESS,
        help=f"stream mode: characters per training window (default: the model's block size, else {DEFAULT_WINDOW})",
    )
    data.add_argument(
        "--stateful",
        action="store_true",
        default=SUPPRESS,
        help="stream mode: read the text as parallel streams and carry the model's state across consecutive "
        "windows (truncated BPTT; models that carry state, e.g. recurrent ones)",
    )
    data.add_argument(
        "--dev-fraction",
        type=float,
        default=SUPPRESS,
        help="stream mode: carve this fraction of the text off the start of train as a dev slice for held-out choices "
        "while fitting count models (instead of val) (default: 0)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--model", default=SUPPRESS, choices=sorted(MODELS), help=f"default: {DEFAULT_MODEL}")
    run.add_argument("-o", "--out", default=SUPPRESS, help="run directory (default: runs/<dataset>-<model>)")
    run.add_argument("--force", action="store_true", default=SUPPRESS, help="overwrite an existing run directory")
    run.add_argument("--resume", metavar="RUN", default=SUPPRESS, help="continue a run exactly where it stopped")
    run.add_argument("--samples", type=int, default=SUPPRESS, help="samples to print at the end (default: 20)")
    presets = MODELS[model_name].presets
    run.add_argument(
        "--preset",
        default=SUPPRESS,
        choices=sorted(presets) or None,
        help="named settings for another budget or data, under the flags given: "
        + ("; ".join(f"{name}: {preset.summary}" for name, preset in presets.items()) or f"none for {model_name}"),
    )
    base = model_train_defaults(model_name)
    if resume_spec is not None:
        base = config_mod.from_dict(TrainConfig, resume_spec.train_config, "run.json: train_config")
    config_mod.add_flags(parser.add_argument_group("training"), TrainConfig, base)
    model_defaults = resume_spec.model_config if resume_spec else MODELS[model_name].config_class()
    config_mod.add_flags(
        parser.add_argument_group(f"model {model_name!r}"), MODELS[model_name].config_class, model_defaults
    )
    return parser


def parse_train_args(argv: list[str]) -> dict[str, Any]:
    """The flags given, as `launch.train` keyword arguments (`--lr auto` as lr="auto")."""
    argv, lr_auto = take_lr_auto(argv)  # --lr auto: run the LR finder first
    pre = Parser(add_help=False, prog="makemore train", allow_abbrev=False)  # --mode is not short for --model
    pre.add_argument("--model", default=DEFAULT_MODEL)
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    resume_spec = ckpt.read_run_spec(known.resume) if known.resume else None
    model_name = resume_spec.model_name if resume_spec else known.model
    if model_name not in MODELS:
        raise MakemoreError(f"unknown model {model_name!r}; choose from {', '.join(sorted(MODELS))}")
    kwargs = vars(build_train_parser(model_name, resume_spec).parse_args(argv))
    if lr_auto:
        kwargs["lr"] = "auto"
    return kwargs


class TrainPrinter:
    """Prints what training reports: info lines on stdout, progress on stderr. A first Ctrl-C / SIGTERM during the
    steps asks for a checkpoint and a stop (`stop`); before them, and during a closed-form fit, it interrupts."""

    def __init__(self):
        self.stop = StopFlag()
        self.progress: Callable[[dict], None] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "info":
            print(event["message"], flush=True)
        elif kind == "start":
            if event["steps"]:
                self.stop.install()
                self.progress = progress_printer(event["max_steps"], event["step"])
        elif self.progress is not None:
            self.progress(event)
        elif kind == "warning":
            print(f"makemore: warning: {event['message']}", file=sys.stderr)

    def close(self) -> None:
        getattr(self.progress, "close", lambda: None)()


def cmd_train(argv: list[str]) -> int:
    kwargs = parse_train_args(argv)
    printer = TrainPrinter()
    try:
        result = launch.train(**kwargs, on_event=printer, should_stop=printer.stop)
    finally:
        printer.close()
    interrupted = result["stopped"] == "interrupted"
    code = 128 + (printer.stop.signal or signal.SIGINT) if interrupted else 0
    if result["is_main"]:
        print_result(result)
    return code


def print_result(result: dict[str, Any]) -> None:
    run_dir = result["run_dir"]
    if result["message"]:
        print(result["message"])
        return
    if result["stopped"] == "interrupted":
        print(
            f"interrupted: checkpoint saved at step {result['step']} in {run_dir}; "
            f"continue with: makemore train --resume {run_dir}",
            file=sys.stderr,
        )
        return
    if result["fitted"]:
        print("fitted: " + ", ".join(f"{config_mod.flag_name(k)} {v}" for k, v in result["fitted"].items()))
    print(
        f"stopped: {result['stopped']} at step {result['step']} after {result['elapsed']:.1f}s; "
        f"best val loss {result['best_val']:.4f} (step {result['best_step']})"
    )
    val = result["val"]
    print(f"val: nll {val['nll']:.4f} nats/token, {val['bpc']:.3f} bits/char, perplexity {val['ppl']:.2f}")
    if result["sample_text"] is not None:
        text = result["sample_text"]
        print(f"a {len(text)}-character sample (also in {Path(run_dir) / 'samples.txt'}):\n{text}")
    elif result["samples"]:
        items = result["samples"]
        print(f"{len(items)} samples (also in {Path(run_dir) / 'samples.txt'}):")
        width = max(len(s["item"]) for s in items)
        for sample in items:
            print(f"{sample['item']:<{width}}  {sample['status']}")
