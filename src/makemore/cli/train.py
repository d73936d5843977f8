"""`makemore train`: fit a model on a text file into a run directory, or resume one."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from makemore import config as config_mod
from makemore.cli import plot as plot_cli
from makemore.cli.common import Parser, StopFlag, progress_printer
from makemore.cli.generate import decode_all, max_item_len, novelty_sets, print_samples, stream_text
from makemore.data.lines import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    LineSplit,
    Vocab,
    parse_fractions,
)
from makemore.data.stream import (
    DEFAULT_WINDOW,
    MODES,
    Corpus,
    detect_mode,
    open_stream_corpus,
    read_corpus,
    split_offsets,
    stream_splits,
)
from makemore.errors import MakemoreError
from makemore.generation.sample import DecodeOptions, generate
from makemore.models import DEFAULT_MODEL, MODELS, build_model
from makemore.runs import checkpoint as ckpt
from makemore.runs.lock import LOCK_FILE, RunLock, remove_stale_temp_files
from makemore.training import distributed
from makemore.training.launch import load_splits, model_train_defaults
from makemore.training.trainer import TrainConfig, Trainer, evaluate, resolve_device


def build_train_parser(model_name: str, resume_spec: ckpt.RunSpec | None) -> Parser:
    parser = Parser(prog="makemore train", description="Train a model on a text file (one item per line).")
    data = parser.add_argument_group("data")
    data.add_argument(
        "-i",
        "--input",
        default=DEFAULT_DATASET,
        help=f"a UTF-8 text file, or a built-in dataset ({', '.join(BUILTIN_DATASETS)}); default: {DEFAULT_DATASET}",
    )
    data.add_argument("--val-file", help="explicit val split (then --split only cuts train/test from --input)")
    data.add_argument("--test-file", help="explicit test split")
    data.add_argument(
        "--split",
        help="train,val,test fractions (default: 0.8,0.1,0.1 shuffled items in line mode; 0.9,0.1,0 in stream mode, "
        "where val is the last part of the text and test the part before it)",
    )
    data.add_argument("--max-item-len", type=int, default=256, help="refuse lines longer than this (default: 256)")
    data.add_argument(
        "--mode",
        default="auto",
        choices=MODES,
        help="line: one item per line; stream: one continuous text; auto: decide from the file (default: auto)",
    )
    data.add_argument(
        "--seq-len",
        type=int,
        help=f"stream mode: characters per training window (default: the model's block size, else {DEFAULT_WINDOW})",
    )
    data.add_argument(
        "--stateful",
        action="store_true",
        help="stream mode: read the text as parallel streams and carry the model's state across consecutive "
        "windows (truncated BPTT; models that carry state, e.g. recurrent ones)",
    )
    data.add_argument(
        "--dev-fraction",
        type=float,
        default=0.0,
        help="stream mode: carve this fraction of the text off the start of train as a dev slice for held-out choices "
        "while fitting count models (instead of val) (default: 0)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--model", default=model_name, choices=sorted(MODELS), help=f"default: {DEFAULT_MODEL}")
    run.add_argument("-o", "--out", help="run directory (default: runs/<dataset>-<model>)")
    run.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    run.add_argument("--resume", metavar="RUN", help="continue a run exactly where it stopped")
    run.add_argument("--samples", type=int, default=20, help="samples to print at the end (default: 20)")
    presets = MODELS[model_name].presets
    run.add_argument(
        "--preset",
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


def default_run_dir(args: argparse.Namespace) -> Path:
    stem = args.input if args.input in BUILTIN_DATASETS else Path(args.input).stem
    return Path("runs") / f"{stem}-{args.model}"


def lock_run_dir(run_dir: Path, held: contextlib.ExitStack) -> None:
    """Hold the run directory's lock until `held` closes (a second process refuses), then clear temp files that a
    killed writer left behind."""
    held.enter_context(RunLock(run_dir))
    remove_stale_temp_files(run_dir)


def prepare_run_dir(run_dir: Path, force: bool, held: contextlib.ExitStack | None = None) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: exists and is not a directory")
    if held is not None:  # lock first: --force must not delete files under a run that is still training
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or error
            raise MakemoreError(f"{run_dir}: cannot create the run directory ({reason})") from None
        lock_run_dir(run_dir, held)
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        if not force:
            raise MakemoreError(
                f"{run_dir}: already exists; use --force to overwrite or --resume {run_dir} to continue"
            )
        for name in (
            ckpt.RUN_FILE,
            ckpt.WEIGHTS_FILE,
            ckpt.CHECKPOINT_FILE,
            ckpt.CHECKPOINT_META,
            ckpt.METRICS_FILE,
            "diagnostics.jsonl",
            "samples.txt",
            "train.txt",
            "val.txt",
            "test.txt",
        ):
            (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MakemoreError(f"{run_dir}: cannot create the run directory ({error.strerror})") from None


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


def cmd_train(argv: list[str]) -> int:
    with contextlib.ExitStack() as held:  # the run directory's lock, released however training ends
        return train_command(argv, held)


def train_command(argv: list[str], held: contextlib.ExitStack) -> int:
    argv, lr_auto = plot_cli.take_lr_auto(argv)  # --lr auto: run the LR finder first (see plot_cli.py)
    pre = Parser(add_help=False, prog="makemore train", allow_abbrev=False)  # --mode is not short for --model
    pre.add_argument("--model", default=DEFAULT_MODEL)
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    resume_spec = ckpt.read_run_spec(known.resume) if known.resume else None
    model_name = resume_spec.model_name if resume_spec else known.model
    if model_name not in MODELS:
        raise MakemoreError(f"unknown model {model_name!r}; choose from {', '.join(sorted(MODELS))}")
    if MODELS[model_name].made_by:
        raise MakemoreError(f"--model {model_name} is not trained but made from runs: {MODELS[model_name].made_by}")
    args = build_train_parser(model_name, resume_spec).parse_args(argv)
    model_config_class = MODELS[model_name].config_class

    if resume_spec is not None:
        if args.preset:
            raise MakemoreError("--preset is for a fresh run; a resumed run keeps its settings")
        if lr_auto:
            raise MakemoreError("--lr auto is for a fresh run; give a number to change the lr of a resumed run")
        given = [f.name for f in config_mod.dataclasses.fields(model_config_class) if hasattr(args, f.name)]
        if given:
            raise MakemoreError(f"cannot change model settings when resuming ({', '.join(given)})")
        run_dir = Path(args.resume)
        train_config = config_mod.from_namespace(
            TrainConfig, args, config_mod.from_dict(TrainConfig, resume_spec.train_config, "run.json: train_config")
        )
        model_config, vocab = resume_spec.model_config, resume_spec.vocab
        data_info = resume_spec.data
        if data_info.get("mode") == "stream":  # re-read (and check) the corpus instead of a copy in the run
            corpus = open_stream_corpus(data_info, vocab, run_dir / ckpt.RUN_FILE)
            splits = {}
        else:
            splits = {name: ckpt.read_split_items(run_dir, name) for name in ("train", "val", "test")}
            if not splits["train"]:
                raise MakemoreError(f"{run_dir}: train.txt is missing or empty; cannot resume")
    else:
        preset = MODELS[model_name].presets.get(args.preset) if args.preset else None
        if args.preset and preset is None:
            raise MakemoreError(f"--preset {args.preset}: {model_name} has no such preset")
        train_base, model_base = model_train_defaults(model_name), model_config_class()
        if preset is not None:
            train_base = config_mod.replace(train_base, **preset.train)
            model_base = config_mod.replace(model_base, **preset.model)
        train_config = config_mod.from_namespace(TrainConfig, args, train_base)
        model_config = config_mod.from_namespace(model_config_class, args, model_base)
        if args.max_item_len < 1 or not 0 <= args.samples <= 100_000:
            raise MakemoreError("--max-item-len must be >= 1 and --samples in 0..100000")
        mode, why = resolve_mode(args)
        if mode == "stream":
            corpus, data_info = load_stream(args, model_config, why)
            splits, vocab = {}, corpus.vocab
        else:
            if args.seq_len is not None or args.stateful or args.dev_fraction:
                raise MakemoreError(f"--seq-len, --stateful and --dev-fraction are for stream mode (this is {why})")
            args.split = args.split or "0.8,0.1,0.1"
            splits, data_info = load_splits(args, train_config.seed)
            data_info["mode_reason"] = why
            vocab = Vocab.from_texts([item for split in splits.values() for item in split])
        run_dir = Path(args.out) if args.out else default_run_dir(args)

    # Under torchrun: join the process group (NCCL on GPUs, Gloo on CPU). Rank 0 speaks and writes for all ranks;
    # the others print nothing (their errors still reach stderr).
    dist_info = distributed.setup(resolve_device(train_config.device))
    if not dist_info.is_main:
        sys.stdout = open(os.devnull, "w")  # for the rest of this process's life
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    try:
        model = build_model(model_name, model_config, vocab.size)
    except ValueError as error:
        raise MakemoreError(f"--model {model_name}: {error}") from None
    spec = ckpt.RunSpec(model_name, model_config, config_mod.to_dict(train_config), vocab, data_info)
    if data_info.get("mode") == "stream":
        splits = tensors = stream_splits(corpus, data_info, model, where=str(run_dir / ckpt.RUN_FILE))
        if data_info["stateful"] and not model.carries_state:
            raise MakemoreError(f"--stateful: {model_name} does not carry state between windows; drop --stateful")
        print_stream_data(data_info, tensors, vocab)
    else:
        tensors = {name: LineSplit(items, vocab) for name, items in splits.items()}
        sizes = ", ".join(f"{name} {len(items)}" for name, items in splits.items())
        print(f"data: {data_info['source']} ({sizes} items; vocabulary {vocab.size} symbols incl. boundary)")
    print(f"model: {model_name} {json.dumps(config_mod.to_dict(model_config))}")
    print(f"parameters: {model.parameter_count():,}")
    if lr_auto:  # a fresh model of the same kind sweeps the lr on the train split; this one stays untouched
        train_config = plot_cli.resolve_auto_lr(model_name, model_config, vocab, tensors["train"], train_config)
        spec.train_config = config_mod.to_dict(train_config)

    stop = StopFlag()
    stop.install()
    if resume_spec is None:

        def create_run() -> None:
            prepare_run_dir(run_dir, args.force, held)
            if data_info.get("mode") != "stream":  # a stream run records the file's path, sha256 and offsets instead
                ckpt.write_split_items(run_dir, splits)
            ckpt.write_json(run_dir / ckpt.RUN_FILE, spec.to_json())  # last: a run.json means a complete run

        distributed.run_on_main(create_run)  # rank 0 creates the run; if it cannot, every rank stops
    trainer = Trainer(model, tensors, train_config, run_dir, should_stop=stop)
    print(f"device: {device_summary(trainer)}; run directory: {run_dir}")
    for message in trainer.warnings:
        print(f"makemore: warning: {message}", file=sys.stderr)
    if resume_spec is not None:
        distributed.run_on_main(lambda: lock_run_dir(run_dir, held))  # if rank 0 cannot lock, every rank stops
        if not trainer.restore():
            print("no checkpoint yet (stopped before the first one): starting over from step 0")
        if dist_info.is_main:
            ckpt.write_json(run_dir / ckpt.RUN_FILE, spec.to_json())  # records changed limits, e.g. --max-steps
        print(f"resuming at step {trainer.state.step} of {train_config.max_steps}")
    sys.stdout.flush()
    show_progress = model.trainable and dist_info.is_main
    on_event = progress_printer(train_config.max_steps, trainer.state.step) if show_progress else (lambda e: None)
    trainer.on_event = on_event
    try:
        result = trainer.train()
    finally:
        getattr(on_event, "close", lambda: None)()
    if not dist_info.is_main:  # rank 0 alone reports, evaluates the best weights and writes samples
        return 128 + (stop.signal or signal.SIGINT) if result["stopped"] == "interrupted" else 0
    if result["stopped"] == "interrupted":
        print(
            f"interrupted: checkpoint saved at step {result['step']} in {run_dir}; "
            f"continue with: makemore train --resume {run_dir}",
            file=sys.stderr,
        )
        return 128 + (stop.signal or signal.SIGINT)

    _, best = ckpt.load_model(run_dir, trainer.device)
    val = evaluate(best, tensors["val"].eval_batches(train_config.eval_batch_size)) if splits["val"] else None
    print(
        f"stopped: {result['stopped']} at step {result['step']} after {result['elapsed']:.1f}s; "
        f"best val loss {result['best_val']:.4f} (step {result['best_step']})"
    )
    if val is not None:
        print(f"val: nll {val['nll']:.4f} nats/token, {val['bpc']:.3f} bits/char, perplexity {val['ppl']:.2f}")
    if args.samples and data_info.get("mode") == "stream":
        options = DecodeOptions()
        text = "".join(stream_text(best, spec.vocab, "", STREAM_SAMPLE_CHARS, options, train_config.seed))
        ckpt.atomic_write(run_dir / "samples.txt", (text + "\n").encode("utf-8"))
        print(f"a {STREAM_SAMPLE_CHARS}-character sample (also in {run_dir / 'samples.txt'}):\n{text}")
    elif args.samples:
        generator = torch.Generator(device=trainer.device).manual_seed(train_config.seed)
        items = decode_all(spec.vocab, generate(best, args.samples, max_item_len(spec, splits), generator=generator))
        ckpt.atomic_write(run_dir / "samples.txt", "".join(item + "\n" for item in items).encode("utf-8"))
        print(f"{args.samples} samples (also in {run_dir / 'samples.txt'}):")
        print_samples(items, novelty_sets(run_dir))
    return 0


STREAM_SAMPLE_CHARS = 300  # length of the sample printed at the end of a stream-mode training run


def resolve_mode(args: argparse.Namespace) -> tuple[str, str]:
    """Line or stream mode, and why: --mode line/stream as given; --mode auto looks at the file."""
    builtin = args.input in BUILTIN_DATASETS and not Path(args.input).exists()
    if args.mode == "stream" and builtin:
        raise MakemoreError(f"--mode stream: {args.input} is a built-in list of names; give a text file with -i")
    if args.mode == "stream" and (args.val_file or args.test_file):
        raise MakemoreError("--mode stream cuts val and test from the text (--split); --val-file/--test-file: lines")
    if args.mode != "auto":
        return args.mode, f"--mode {args.mode}"
    if builtin:
        return "line", "a built-in list of names"
    if args.val_file or args.test_file:
        return "line", "--val-file/--test-file give lists of items"
    return detect_mode(args.input, args.max_item_len)


def load_stream(args: argparse.Namespace, model_config: Any, why: str) -> tuple[Corpus, dict[str, Any]]:
    """Encode the text and record where the splits are: the run stores the path, sha256 and offsets, not a copy."""
    fractions = parse_fractions(args.split or "0.9,0.1,0")
    if not 0 <= args.dev_fraction < fractions[0]:
        raise MakemoreError(f"--dev-fraction must be >= 0 and below the train fraction {fractions[0]}")
    if args.seq_len is not None and args.seq_len < 1:
        raise MakemoreError(f"--seq-len must be >= 1, got {args.seq_len}")
    corpus = read_corpus(args.input)
    offsets = split_offsets(corpus.n_chars, fractions, args.dev_fraction)
    sizes = {name: end - begin for name, (begin, end) in offsets.items()}
    if sizes["val"] < 1 or sizes["train"] < 1:
        raise MakemoreError(f"{args.input}: {corpus.n_chars} chars are too few for --split {args.split}")
    block = getattr(model_config, "block_size", None)
    window = args.seq_len or block or DEFAULT_WINDOW
    origin = "--seq-len" if args.seq_len else "the model's --block-size" if block else "the default"
    data = {
        "mode": "stream",
        "mode_reason": why,
        "source": corpus.path,
        "builtin": False,
        "sha256": corpus.sha256,
        "chars": corpus.n_chars,
        "split": list(fractions),
        "dev_fraction": args.dev_fraction,
        "offsets": offsets,
        "sizes": sizes,
        "window": window,
        "window_origin": origin,
        "stateful": args.stateful,
    }
    return corpus, data


def print_stream_data(data: dict[str, Any], splits: dict[str, Any], vocab: Vocab) -> None:
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in splits.items() if len(split))
    batches = "random windows"
    if data["stateful"]:
        batches = "parallel streams, state carried across windows (truncated BPTT)"
    print(f"data: {data['source']} (stream mode: {data['mode_reason']})")
    print(f"  {data['chars']:,} chars: {sizes}; vocabulary {vocab.size} symbols incl. the start-of-text token")
    print(f"  window {data['window']} chars ({data.get('window_origin', 'run.json')}); batches: {batches}")
    print(f"  evaluation: {splits['val'].plan.describe()}")
