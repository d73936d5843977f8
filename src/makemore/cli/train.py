"""`makemore train`: parse the flags, call `makemore.jobs.train.train`, print what it reports."""

from __future__ import annotations

import argparse
import difflib
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from makemore import config as config_mod
from makemore.cli.common import Parser, StopFlag, progress_printer
from makemore.cli.lr_find import take_lr_auto
from makemore.data.corpus import MODES
from makemore.data.labels import LABELLED_DATASETS
from makemore.data.lines import BUILTIN_DATASETS, DEFAULT_DATASET
from makemore.data.stream import DEFAULT_WINDOW
from makemore.errors import MakemoreError
from makemore.jobs import auto
from makemore.jobs import train as launch
from makemore.jobs.train_settings import model_train_defaults
from makemore.models import MODELS
from makemore.models.labels import DEFAULT_LABEL_MODE, LABEL_MODES
from makemore.runs import checkpoint as ckpt
from makemore.training.config import TrainConfig

SUPPRESS = argparse.SUPPRESS  # flags not given are not passed on: the library's defaults apply


def build_train_parser(model_name: str, resume_spec: ckpt.RunSpec | None) -> Parser:
    parser = Parser(prog="makemore train", description="Train a model on a text file (one item per line).")
    add_data_flags(parser.add_argument_group("data"))
    run = parser.add_argument_group("run")
    add_run_flags(run, model_name)
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


def add_data_flags(data: Any) -> None:
    data.add_argument(
        "-i",
        "--input",
        default=SUPPRESS,
        action="append",
        help=f"a UTF-8 text file, or a built-in dataset ({', '.join(BUILTIN_DATASETS)}); default: {DEFAULT_DATASET}; "
        "with --labelled, repeat it for one file per label (each file's stem is its label)",
    )
    add_label_flags(data)
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


def add_run_flags(run: Any, model_name: str) -> None:
    models = sorted([*MODELS, auto.AUTO_MODEL])
    run.add_argument("--model", default=SUPPRESS, choices=models, help=f"default: {auto.AUTO_MODEL}")
    run.add_argument("-o", "--out", default=SUPPRESS, help=f"run directory (default: runs/<dataset>-{model_name})")
    run.add_argument("--force", action="store_true", default=SUPPRESS, help="overwrite an existing run directory")
    run.add_argument("--resume", metavar="RUN", default=SUPPRESS, help="continue a run exactly where it stopped")
    run.add_argument("--samples", type=int, default=SUPPRESS, help="samples to print at the end (default: 20)")


class AutoParser(Parser):
    """`--model auto`'s flags; a flag that belongs to a chosen model says so (and a misspelt one is matched
    against every model's flags too)."""

    def error(self, message: str):
        flag = re.search(r"unrecognized arguments: (--[\w-]+)", message)
        if flag:
            name, known = flag.group(1).split("=")[0], model_flags()
            if name in known:
                raise MakemoreError(
                    f"{self.prog}: {name} is a setting of one model; --model auto (the default) chooses those: "
                    f"pick a --model to set it (makemore train --model NAME --help)"
                )
            own = set(re.findall(r"--[\w-]+", self.format_help()))
            close = difflib.get_close_matches(name, own | known, n=1)
            if close:
                hint = "" if close[0] in own else " (with a --model)"
                raise MakemoreError(f"{self.prog}: {message}; did you mean {close[0]}{hint}?")
        super().error(message)


def model_flags() -> set[str]:
    """Every flag some trainable model's `makemore train --model NAME` takes."""
    flags: set[str] = set()
    for name, spec in MODELS.items():
        if not spec.made_by:
            flags |= set(re.findall(r"--[\w-]+", build_train_parser(name, None).format_help()))
    return flags


def build_auto_parser() -> Parser:
    """`--model auto` (the default): data flags and a budget; the plan chooses the rest."""
    parser = AutoParser(
        prog="makemore train",
        description="Train the best model a time budget buys: a Kneser-Ney n-gram at once, then neural networks, "
        "mixed with weights fitted on val (--model auto, the default). Pick a --model to choose yourself; "
        "`makemore train --model MODEL --help` lists its settings.",
    )
    add_data_flags(parser.add_argument_group("data"))
    run = parser.add_argument_group("run")
    add_run_flags(run, "auto")
    run.add_argument(
        "--time-budget",
        type=float,
        default=SUPPRESS,
        help=f"seconds for the whole command (default: {auto.BUILTIN_BUDGET:.0f} on a built-in dataset, "
        f"{auto.FILE_BUDGET:.0f} on your file)",
    )
    run.add_argument("--dry-run", action="store_true", default=SUPPRESS, help="print the plan and train nothing")
    run.add_argument("--seed", type=int, default=SUPPRESS, help="seed for the split, every member and the samples")
    run.add_argument("--device", default=SUPPRESS, help="cpu, cuda, mps, or auto (default)")
    return parser


def add_label_flags(group: Any) -> None:
    group.add_argument(
        "--labelled",
        action="store_true",
        default=SUPPRESS,
        help=f"labelled items: LABEL<TAB>ITEM lines, or one file per label (repeated -i); built in: "
        f"{', '.join(LABELLED_DATASETS)}. Splits are stratified by label; the model is conditioned on the label",
    )
    group.add_argument(
        "--label-mode",
        default=SUPPRESS,
        choices=LABEL_MODES,
        help="how a neural model reads the label: added to every input embedding, concatenated to it, or as the "
        f"initial state (default: {DEFAULT_LABEL_MODE}, by measurement; see benchmarks/results/labels.md)",
    )


def single_input(kwargs: dict[str, Any]) -> dict[str, Any]:
    """-i given once is a file or dataset name; several -i are for --labelled (one file per label), as a list."""
    if len(kwargs.get("input", [])) == 1:
        kwargs["input"] = kwargs["input"][0]
    elif "input" in kwargs and not kwargs.get("labelled"):
        raise MakemoreError("-i/--input given more than once: several files are for --labelled (one file per label)")
    return kwargs


def parse_train_args(argv: list[str]) -> dict[str, Any]:
    """The flags given, as `launch.train` keyword arguments (`--lr auto` as lr="auto")."""
    argv, lr_auto = take_lr_auto(argv)  # --lr auto: run the LR finder first
    pre = Parser(add_help=False, prog="makemore train", allow_abbrev=False)  # --mode is not short for --model
    pre.add_argument("--model", default=auto.AUTO_MODEL)
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    if (known.model == auto.AUTO_MODEL and not known.resume) or (known.resume and auto.is_auto_run(known.resume)):
        if lr_auto:
            raise MakemoreError("--lr auto: --model auto chooses the learning rates; pick a --model to use it")
        return single_input(vars(build_auto_parser().parse_args(argv))) | {"model": auto.AUTO_MODEL}
    resume_spec = ckpt.read_run_spec(known.resume) if known.resume else None
    model_name = resume_spec.model_name if resume_spec else known.model
    if model_name not in MODELS:
        raise MakemoreError(f"unknown model {model_name!r}; choose from {', '.join(sorted(MODELS))}")
    kwargs = single_input(vars(build_train_parser(model_name, resume_spec).parse_args(argv)))
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
        if kind == "info" and "member" in event:
            return  # a --model auto member's own lines: the plan's lines say what it does
        if kind == "info":
            print(event["message"], flush=True)
        elif kind == "plan":  # --model auto: a first Ctrl-C stops the members at their next step, saved
            self.stop.install()
        elif kind == "start":
            self.close()  # --model auto: one progress display per member
            if event["steps"]:
                self.stop.install()
                self.progress = progress_printer(event["max_steps"], event["step"])
        elif self.progress is not None:
            self.progress(event)
        elif kind == "warning":
            print(f"makemore: warning: {event['message']}", file=sys.stderr)

    def close(self) -> None:
        getattr(self.progress, "close", lambda: None)()
        self.progress = None


def cmd_train(argv: list[str]) -> int:
    kwargs = parse_train_args(argv)
    printer = TrainPrinter()
    try:
        result = launch.train(**kwargs, on_event=printer, should_stop=printer.stop)
    finally:
        printer.close()
    interrupted = result["stopped"] == "interrupted"
    code = 128 + (printer.stop.signal or signal.SIGINT) if interrupted else 0
    if result.get("dry_run"):
        print("\n".join(result["plan"]))
    elif result["is_main"]:
        print_result(result)
    return code


def print_members(result: dict[str, Any]) -> None:
    """--model auto: each member's val NLL, mixture weight and time, then the whole command's time."""
    width = max(len(member["name"]) for member in result["members"])
    names = {member["name"] for member in result["members"]}
    mixed = [member for member in result["members"] if member["name"] + "-knn" not in names]
    for member in result["members"]:
        if member["name"] + "-knn" in names:  # a recurrent member mixed as its memory
            how = f"mixed as {member['name']}-knn"
        else:
            weight = member.get("weight", 0.0)
            how = f"weight {weight:.3f}" + ("  (adds nothing: weight ~0)" if weight < 0.005 else "")
        print(f"  {member['name']:<{width}}  val {member['val_nll']:.4f}  {member['elapsed']:.0f} s  {how}")
    print(f"mix of {len(mixed)} in {result['elapsed']:.0f} s: {result['run_dir']}")


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
    if "members" in result:
        print_members(result)
    else:
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
