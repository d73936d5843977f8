"""The `makemore` command. Only this module prints. Every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from makemore import config as config_mod
from makemore.cli import mix as mix_cli
from makemore.cli import plot as plot_cli
from makemore.data.lines import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    LineSplit,
    Vocab,
    builtin_text,
    parse_fractions,
    parse_items,
    read_items,
    read_text,
    split_items,
)
from makemore.data.stream import (
    DEFAULT_WINDOW,
    MODES,
    Corpus,
    detect_mode,
    generate_stream,
    open_stream_corpus,
    read_corpus,
    split_offsets,
    stream_splits,
)
from makemore.errors import MakemoreError
from makemore.generation.sample import DecodeOptions, filter_logits, generate
from makemore.models import DEFAULT_MODEL, MODELS, build_model
from makemore.runs import checkpoint as ckpt
from makemore.runs.lock import LOCK_FILE, RunLock, remove_stale_temp_files
from makemore.training import distributed
from makemore.training.trainer import TrainConfig, Trainer, evaluate, resolve_device

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        raise MakemoreError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------------------------------------------ train


def model_train_defaults(model_name: str) -> TrainConfig:
    return config_mod.replace(TrainConfig(), **MODELS[model_name].train_defaults)


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


def load_splits(args: argparse.Namespace, seed: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    items, source = read_items(args.input, args.max_item_len)
    fractions = parse_fractions(args.split)
    info: dict[str, Any] = {
        "mode": "line",
        "source": source.name,
        "builtin": source.builtin,
        "sha256": source.sha256,
        "seed": seed,
    }
    if args.val_file or args.test_file:
        splits = {"train": items, "val": [], "test": []}
        for name in ("val", "test"):
            path = getattr(args, f"{name}_file")
            if path:
                splits[name] = parse_items(read_text(path), path, args.max_item_len)
                info[f"{name}_file"] = str(Path(path).resolve())
        if not args.val_file:  # cut val (and test, if no file) from --input with the fractions
            cut = split_items(items, fractions, seed)
            splits["train"], splits["val"] = cut["train"], cut["val"]
            if not args.test_file:
                splits["test"] = cut["test"]
    else:
        splits = split_items(items, fractions, seed)
        info["split"] = list(fractions)
    if not splits["train"]:
        raise MakemoreError(f"{args.input}: the training split is empty (too few items for --split {args.split})")
    info["sizes"] = {name: len(split) for name, split in splits.items()}
    return splits, info


def default_run_dir(args: argparse.Namespace) -> Path:
    stem = args.input if args.input in BUILTIN_DATASETS else Path(args.input).stem
    return Path("runs") / f"{stem}-{args.model}"


def lock_run_dir(run_dir: Path, held: contextlib.ExitStack) -> None:
    """Hold the run directory's lock until `held` closes (a second process refuses), then clear temp files that a
    killed writer left behind."""
    lock = held.enter_context(RunLock(run_dir))
    if lock.took_over:
        print(f"run directory lock: taken over from {lock.took_over} (no longer running)")
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


class StopFlag:
    """First Ctrl-C / SIGTERM asks the trainer to save and stop after the current step; a second one aborts."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        def handler(signum, frame):
            if self.signal is not None:
                raise Interrupted(signum)
            self.signal = signum

        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            signal.signal(signal.SIGINT, handler)
            signal.signal(signal.SIGTERM, handler)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM outside training's save-and-stop: main() prints one line, exits 128 + signal (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_on_signals() -> Callable[[], None]:
    """Make SIGINT and SIGTERM raise Interrupted (sampling, scoring, ...: nothing to save); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        raise Interrupted(signum)

    for signum in previous:
        signal.signal(signum, handler)

    def undo() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)

    return undo


def quiet_broken_pipe() -> int:
    """The reader of our output went away (makemore sample | head): stop quietly, like a process killed by SIGPIPE."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
    return 128 + signal.SIGPIPE


def progress_printer(total: int, initial: int = 0) -> Callable[[dict], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True)
    shown: dict[str, str] = {}

    def on_event(event: dict) -> None:
        if event["event"] == "train":
            bar.update(event["step"] - bar.n)
            shown.update(loss=f"{event['train_loss']:.4f}", tok_s=f"{event['tokens_per_s']:.0f}")
        elif event["event"] == "eval":
            shown.update(val=f"{event['val_loss']:.4f}")
        elif event["event"] == "warning":
            bar.write(f"makemore: warning: {event['message']}", file=sys.stderr)
            return
        bar.set_postfix(shown, refresh=True)
        if event.get("step", 0) >= total:
            bar.close()

    on_event.close = bar.close  # type: ignore[attr-defined]
    return on_event


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


# ------------------------------------------------------------------------------------------------------ stream mode

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


def stream_text(
    model: Any, vocab: Vocab, prompt: str, length: int, options: DecodeOptions, seed: int | None
) -> Iterator[str]:
    """Characters continuing `prompt` (empty: a new line, or the start of the text), one at a time."""
    generator = torch.Generator(device=model.device)
    generator.manual_seed(seed) if seed is not None else generator.seed()

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if options.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(filter_logits(logits, options), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    start = vocab.encode(prompt) if prompt else [vocab.stoi[c] for c in "\n" if c in vocab.stoi]
    for token in generate_stream(model, start, length, pick):
        yield vocab.chars[token - 1]


def sample_stream(args: argparse.Namespace, spec: ckpt.RunSpec, model: Any) -> int:
    """`makemore sample` for a stream-mode run: --prompt, then --length characters printed as they are drawn."""
    if args.prefix or args.only_new or getattr(args, "beam", None):
        raise MakemoreError("--prefix, --only-new and --beam are for line-mode runs; a stream run takes --prompt TEXT")
    if args.length < 1:
        raise MakemoreError(f"--length must be >= 1, got {args.length}")
    spec.vocab.check(args.prompt, "--prompt")
    options = DecodeOptions(args.temperature, args.top_k, args.top_p, args.greedy)
    sys.stdout.write(args.prompt)
    for char in stream_text(model, spec.vocab, args.prompt, args.length, options, args.seed):
        sys.stdout.write(char)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def eval_stream(args: argparse.Namespace, spec: ckpt.RunSpec, model: Any) -> tuple[dict[str, dict], str]:
    """`makemore eval` for a stream-mode run: the held-out splits (or --input) with as much context as the model
    allows; returns the results and how the context was given."""
    where = str(Path(args.run) / ckpt.RUN_FILE)
    if args.input:
        corpus = read_corpus(args.input, vocab=spec.vocab)
        data = dict(spec.data, offsets={"train": [1, 1], "val": [1, 1], Path(args.input).name: [1, corpus.n_chars + 1]})
        names = [Path(args.input).name]
    else:
        corpus, data = open_stream_corpus(spec.data, spec.vocab, where), spec.data
        names = ["val", "test", "dev"] if args.split == "all" else [args.split]
    splits = stream_splits(corpus, data, model, stride=args.stride, where=where)
    results = {
        name: evaluate(model, splits[name].eval_batches(args.batch_size))
        for name in names
        if name in splits and len(splits[name])
    }
    return results, splits["val"].plan.describe()


# --------------------------------------------------------------------------------------------- sample / eval / score


def max_item_len(spec: ckpt.RunSpec, splits: dict[str, list[str]] | None = None) -> int:
    if "max_len" in spec.data:
        return int(spec.data["max_len"])
    lengths = [len(item) for split in (splits or {}).values() for item in split]
    return max(lengths, default=32) * 2


def decode_all(vocab: Vocab, outputs: list[list[int]]) -> list[str]:
    return [vocab.decode(ids) for ids in outputs]


def novelty_sets(run_dir: Path) -> tuple[set[str], set[str]]:
    train = set(ckpt.read_split_items(run_dir, "train"))
    held_out = set(ckpt.read_split_items(run_dir, "val")) | set(ckpt.read_split_items(run_dir, "test"))
    return train, held_out


def status_of(item: str, sets: tuple[set[str], set[str]]) -> str:
    if item in sets[0]:
        return "in-train"
    return "in-val-test" if item in sets[1] else "new"


def print_samples(items: list[str], sets: tuple[set[str], set[str]]) -> None:
    width = max((len(item) for item in items), default=0)
    for item in items:
        print(f"{item:<{width}}  {status_of(item, sets)}")


def load_run_for_use(run: str, device: str = "cpu"):
    from makemore.training.trainer import resolve_device

    spec, model = ckpt.load_model(run, resolve_device(device))
    return spec, model


def build_sample_parser() -> Parser:
    parser = Parser(
        prog="makemore sample",
        description="Generate new items from a trained run. Constraints are exact: every item satisfies them.",
    )
    parser.add_argument("run", help="run directory")
    parser.add_argument("-n", "--num", type=int, help="how many items (default: 20)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default: 1: a decoding step is many tiny ops, which a "
        "second thread slows down, badly so when another process keeps a core busy)",
    )
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--temperature", type=float, default=1.0, help="< 1 sharper, > 1 more varied (default: 1)")
    decoding.add_argument("--top-k", type=int, help="sample only among the k most likely characters")
    decoding.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with probability >= p")
    decoding.add_argument("--greedy", action="store_true", help="always take the most likely character")
    decoding.add_argument("--beam", type=int, metavar="K", help="beam search: the K most probable items, best first")
    decoding.add_argument("--beam-width", type=int, metavar="W", help="hypotheses kept per step (default: K)")
    decoding.add_argument(
        "--length-penalty",
        type=float,
        default=0.0,
        metavar="A",
        help="beam: rank by logprob / length**A (default: 0, pure probability)",
    )
    constraints = parser.add_argument_group("constraints (exact: enforced by masking inside the sampler)")
    constraints.add_argument("--prefix", default="", help="every item starts with this text")
    constraints.add_argument("--suffix", default="", help="every item ends with this text")
    constraints.add_argument("--contains", action="append", default=[], help="every item contains this (repeatable)")
    constraints.add_argument("--regex", help="every item fully matches this regular expression")
    constraints.add_argument("--charset", help="items use only these characters")
    constraints.add_argument(
        "--min-len", type=int, default=1, help="shortest item in characters (default: 1: no empty items)"
    )
    constraints.add_argument("--max-len", type=int, help="longest item in characters (default: 2x the longest seen)")
    constraints.add_argument(
        "--particles",
        type=int,
        default=1,
        metavar="M",
        help="sequential Monte Carlo with M particles per item: items follow the model conditioned on the "
        "constraints more closely than masking alone (M times the work; default: 1, masking alone)",
    )
    constraints.add_argument(
        "--conditioning",
        choices=("auto", "reject", "mask"),
        default="auto",
        help="how items meet suffix/contains/regex/charset constraints: reject = draw given the prefix and keep "
        "those that match (exactly the model conditioned on the constraints); mask = mask each step (always fast; "
        "skews towards items forced to match late); auto = reject while at least 0.5%% of draws match, then mask "
        "(default: auto)",
    )
    filters = parser.add_argument_group("filters (more candidates are drawn until -n pass)")
    filters.add_argument("--only-new", action="store_true", help="keep only items in none of the data splits")
    filters.add_argument("--unique", action="store_true", help="no item twice")
    filters.add_argument("--exclude-file", metavar="FILE", help="drop items listed in FILE (one per line)")
    filters.add_argument("--min-distance", type=int, metavar="D", help="edit distance >= D to every training item")
    filters.add_argument(
        "--max-attempts", type=int, metavar="N", help="candidates to draw at most (default: max(1000, 100 n))"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        default="plain",
        choices=("plain", "text", "jsonl"),
        help="plain: items only; text: with log-prob and new/in-train/in-val-test; jsonl: everything (default: plain)",
    )
    output.add_argument("-o", "--out", metavar="FILE", help="write the items to FILE (atomically) instead of stdout")
    stream = parser.add_argument_group("stream-mode runs")
    stream.add_argument("--prompt", default="", help="stream-mode runs: the text to continue (default: a new line)")
    stream.add_argument("--length", type=int, default=500, help="stream-mode runs: characters to draw (default: 500)")
    return parser


LINE_ONLY_SAMPLE_FLAGS = (
    "suffix",
    "contains",
    "regex",
    "charset",
    "unique",
    "exclude_file",
    "min_distance",
    "beam_width",
)


def read_exclude_file(path: str) -> set[str]:
    return {line.strip() for line in read_text(path).splitlines() if line.strip()}


def format_items(items: list[dict[str, Any]], fmt: str) -> str:
    """The items as plain lines, aligned text (item, log-prob, status) or JSON lines."""
    if fmt == "plain":
        return "".join(item["item"] + "\n" for item in items)
    if fmt == "text":
        width = max((len(item["item"]) for item in items), default=0)
        return "".join(
            f"{item['item']:<{width}}  {item['unconstrained_logprob']:9.4f}  {item['status']}\n" for item in items
        )
    lines = []
    for item in items:
        record = dict(item)
        for key in ("logprob", "unconstrained_logprob", "score"):
            if key in record:
                record[key] = round(record[key], 6)
        record["char_logprobs"] = [[c, round(lp, 4)] for c, lp in record["char_logprobs"]]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def emit(text: str, out: str | None, count: int, what: str) -> None:
    """Print `text`, or write it atomically to `out` (and say so on stderr)."""
    if out is None:
        sys.stdout.write(text)
        return
    ckpt.atomic_write(Path(out), text.encode("utf-8"))
    print(f"wrote {count} {what} to {out}", file=sys.stderr)


def cmd_sample(argv: list[str]) -> int:
    from makemore.api import Run

    args = build_sample_parser().parse_args(argv)
    if not 1 <= args.threads <= 1024:
        raise MakemoreError("--threads must be between 1 and 1024")
    torch.set_num_threads(args.threads)
    if args.num is not None and args.num < 1:
        raise MakemoreError("-n must be >= 1")
    if not args.temperature > 0 or args.temperature > 1e6:
        raise MakemoreError("--temperature must be > 0 and finite")
    if args.top_k is not None and args.top_k < 1:
        raise MakemoreError("--top-k must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise MakemoreError("--top-p must be in (0, 1]")
    if args.beam is not None:
        sampling = [
            flag
            for flag, used in (
                ("--temperature", args.temperature != 1.0),
                ("--top-k", args.top_k is not None),
                ("--top-p", args.top_p is not None),
                ("--greedy", args.greedy),
                ("-n", args.num is not None and args.num != args.beam),
            )
            if used
        ]
        if sampling:
            raise MakemoreError(f"--beam K returns the K most probable items; it takes no {', '.join(sampling)}")
    elif args.beam_width is not None or args.length_penalty:
        raise MakemoreError("--beam-width and --length-penalty need --beam K")
    run = Run.load(args.run, args.device)
    if run.spec.data.get("mode") == "stream":
        used = [f"--{name.replace('_', '-')}" for name in LINE_ONLY_SAMPLE_FLAGS if getattr(args, name)]
        used += [flag for flag, value in (("--particles", args.particles), ("--min-len", args.min_len)) if value != 1]
        if used:
            raise MakemoreError(f"{', '.join(used)}: for line-mode runs; a stream run takes --prompt and --length")
        args.num = args.num or 20
        return sample_stream(args, run.spec, run.model)
    if args.prompt:
        raise MakemoreError("--prompt is for stream-mode runs; items of a line-mode run start with --prefix")
    result = run.generate(
        args.num or 20,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
        beam=args.beam,
        beam_width=args.beam_width,
        length_penalty=args.length_penalty,
        prefix=args.prefix,
        suffix=args.suffix,
        contains=args.contains,
        regex=args.regex,
        charset=args.charset,
        min_len=args.min_len,
        max_len=args.max_len,
        only_new=args.only_new,
        unique=args.unique,
        exclude=read_exclude_file(args.exclude_file) if args.exclude_file else (),
        min_distance=args.min_distance,
        max_attempts=args.max_attempts,
        particles=args.particles,
        conditioning=args.conditioning,
        nearest=args.format == "jsonl",
        logprobs=args.format != "plain",
    )
    if result.note:
        print(f"makemore sample: {result.note}", file=sys.stderr)
    emit(format_items(result.items, args.format), args.out, len(result.items), "items")
    return 0 if result.items else 1


def cmd_eval(argv: list[str]) -> int:
    parser = Parser(prog="makemore eval", description="NLL (nats/token), bits/char and perplexity of a run.")
    parser.add_argument("run")
    parser.add_argument("--split", default="all", choices=("train", "val", "test", "all"))
    parser.add_argument("-i", "--input", help="evaluate on this file instead of the run's splits")
    parser.add_argument("--format", default="text", choices=("text", "json"))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--stride",
        type=int,
        help="stream-mode runs of windowed models: score this many new chars per window (default: the largest "
        "stride that gives every char the model's full context, at least half the window); --split all is val+test",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise MakemoreError("--batch-size must be >= 1")
    spec, model = load_run_for_use(args.run, args.device)
    # stream-mode runs: one text, every char predicted once; `context` says how it got its context
    results, context = eval_stream(args, spec, model) if spec.data.get("mode") == "stream" else ({}, None)
    if context is not None:
        sources = {}
    elif args.input:
        sources = {Path(args.input).name: parse_items(read_text(args.input), args.input, 1 << 20)}
    else:
        names = ("train", "val", "test") if args.split == "all" else (args.split,)
        sources = {name: ckpt.read_split_items(args.run, name) for name in names}
    for name, items in sources.items():
        if items:
            for item in items:
                spec.vocab.check(item, f"{name}: item")
            results[name] = evaluate(model, LineSplit(items, spec.vocab).eval_batches(args.batch_size))
    if args.format == "json":
        print(
            json.dumps(
                {
                    name: {
                        "nll": round(r["nll"], 6),
                        "bpc": round(r["bpc"], 6),
                        "ppl": round(r["ppl"], 6),
                        "tokens": r["tokens"],
                        **({"context": context} if context else {}),
                    }
                    for name, r in results.items()
                }
            )
        )
    else:
        for name, r in results.items():
            print(
                f"{name:>6}: nll {r['nll']:.4f} nats/token  {r['bpc']:.4f} bits/char  "
                f"perplexity {r['ppl']:.3f}  ({r['tokens']} tokens)"
            )
        if context:
            print(f"context: {context}")
    return 0


def read_score_items(path: str) -> list[tuple[int, str]]:
    """(line number, item) for every non-blank line of `path` ('-': standard input)."""
    text = sys.stdin.read() if path == "-" else read_text(path)
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def format_scores(results: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(
            json.dumps(
                {
                    "item": r["item"],
                    "logprob": round(r["logprob"], 6),
                    "nll_per_token": round(r["nll_per_token"], 6),
                    "char_logprobs": [[c, round(lp, 4)] for c, lp in r["char_logprobs"]],
                },
                ensure_ascii=False,
            )
            + "\n"
            for r in results
        )
    if fmt == "tsv":
        rows = ["item\tlogprob\tnll_per_token\n"]
        rows += [f"{r['item']}\t{r['logprob']:.6f}\t{r['nll_per_token']:.6f}\n" for r in results]
        return "".join(rows)
    return "".join(
        f"{r['item']}\tlogprob {r['logprob']:.4f}\tnll/token {r['nll_per_token']:.4f}\t"
        + " ".join(f"{c}:{lp:.2f}" for c, lp in r["char_logprobs"])
        + "\n"
        for r in results
    )


def cmd_score(argv: list[str]) -> int:
    from makemore.api import Run

    parser = Parser(
        prog="makemore score",
        description="Log-probability of strings under a run's model: rank candidates, or flag odd entries.",
    )
    parser.add_argument("run")
    parser.add_argument("strings", nargs="*", help="items to score")
    parser.add_argument("-f", "--file", help="also score every line of this file ('-': standard input)")
    parser.add_argument(
        "--sort",
        nargs="?",
        const="nll",
        choices=("nll", "logprob"),
        help="most plausible first, by NLL per token (default) or by total log-prob",
    )
    parser.add_argument("--reverse", action="store_true", help="with --sort: most surprising first")
    parser.add_argument("--format", default="text", choices=("text", "tsv", "jsonl"), help="default: text")
    parser.add_argument("--skip-unknown", action="store_true", help="skip items with characters the model lacks")
    parser.add_argument("--batch-size", type=int, default=512, help="items per forward pass (default: 512)")
    parser.add_argument("-o", "--out", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise MakemoreError("--batch-size must be >= 1")
    if args.reverse and not args.sort:
        raise MakemoreError("--reverse needs --sort")
    if any(not s for s in args.strings):
        raise MakemoreError("cannot score an empty string")
    entries = [(f"argument {i}", s) for i, s in enumerate(args.strings, start=1)]
    if args.file:
        entries += [(f"{args.file}: line {number}", item) for number, item in read_score_items(args.file)]
    if not entries:
        raise MakemoreError("nothing to score: give strings or --file FILE")
    run = Run.load(args.run, args.device)
    items, skipped = [], 0
    for where, item in entries:
        unknown = run.vocab.unknown(item)
        if not unknown:
            items.append(item)
        elif args.skip_unknown:
            skipped += 1
        else:
            shown = " ".join(repr(c) for c in unknown[:10])
            raise MakemoreError(
                f"{where}: item {item[:40]!r} has characters not in the model's vocabulary: {shown}"
                + (" (--skip-unknown skips such items)" if args.file else "")
            )
    if skipped:
        print(f"makemore score: skipped {skipped} items with characters not in the model's vocabulary", file=sys.stderr)
    results = run.score(items, batch_size=args.batch_size) if items else []
    if args.sort == "nll":
        results.sort(key=lambda r: r["nll_per_token"], reverse=args.reverse)
    elif args.sort == "logprob":
        results.sort(key=lambda r: r["logprob"], reverse=not args.reverse)
    emit(format_scores(results, args.format), args.out, len(results), "scores")
    return 0 if results else 1


def cmd_datasets(argv: list[str]) -> int:
    Parser(prog="makemore datasets", description="List the built-in datasets.").parse_args(argv)
    for name, description in BUILTIN_DATASETS.items():
        count = len(parse_items(builtin_text(name), name, 1 << 20))
        default = " (default)" if name == DEFAULT_DATASET else ""
        print(f"{name:<12} {count:>6} items  {description}{default}")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train": (cmd_train, "train a model (or fit a count model) on a text file"),
    "sample": (cmd_sample, "generate new items from a run"),
    "eval": (cmd_eval, "NLL / bits per char / perplexity on train, val, test or a file"),
    "score": (cmd_score, "log-probability of given strings"),
    "datasets": (cmd_datasets, "list the built-in datasets"),
    "plot": (plot_cli.cmd_plot, "pictures: loss curves, bigram heatmap, embeddings, activations, attention"),
    "lr-find": (plot_cli.cmd_lr_find, "learning-rate range test: loss against lr, and a suggested lr"),
    "export-embeddings": (plot_cli.cmd_export_embeddings, "write a run's character embeddings as CSV or .npy"),
    "mix": (mix_cli.cmd_mix, "interpolate trained runs, weights fitted on val (a new run)"),
}


def usage() -> str:
    lines = ["usage: makemore COMMAND [options]   (makemore COMMAND --help for its options)", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "models: " + ", ".join(f"{name} ({spec.summary})" for name, spec in MODELS.items())]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from makemore import __version__

        print(f"makemore {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        raise MakemoreError(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    return command[0](argv[1:])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    encoding = (getattr(sys.stdout, "encoding", None) or "utf-8").lower().replace("-", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a non-UTF-8 terminal: escape emoji, don't crash on them
    restore_signals = exit_on_signals()
    try:
        code = run(argv)
    except MakemoreError as error:
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever a path contains
        print(f"makemore: error: {message}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"makemore: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        code = 128 + signum
    except BrokenPipeError:
        code = quiet_broken_pipe()
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"makemore: error: {where}{error.strerror or error}", file=sys.stderr)
        code = EXIT_USAGE
    finally:
        restore_signals()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = quiet_broken_pipe()
    raise SystemExit(code)


__all__ = ["main", "run"]
