"""The `makemore` command. Only this module prints. Every user error is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import config as config_mod
from .data import (
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
from .errors import MakemoreError
from .models import DEFAULT_MODEL, MODELS, build_model
from .sample import DecodeOptions, generate
from .scoring import score_items
from .train import TrainConfig, Trainer, evaluate

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
    data.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default: 0.8,0.1,0.1)")
    data.add_argument("--max-item-len", type=int, default=256, help="refuse lines longer than this (default: 256)")
    run = parser.add_argument_group("run")
    run.add_argument("--model", default=model_name, choices=sorted(MODELS), help=f"default: {DEFAULT_MODEL}")
    run.add_argument("-o", "--out", help="run directory (default: runs/<dataset>-<model>)")
    run.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    run.add_argument("--resume", metavar="RUN", help="continue a run exactly where it stopped")
    run.add_argument("--samples", type=int, default=20, help="samples to print at the end (default: 20)")
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


def prepare_run_dir(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: exists and is not a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
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
                raise KeyboardInterrupt
            self.signal = signum

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


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
        bar.set_postfix(shown, refresh=True)
        if event.get("step", 0) >= total:
            bar.close()

    on_event.close = bar.close  # type: ignore[attr-defined]
    return on_event


def cmd_train(argv: list[str]) -> int:
    pre = Parser(add_help=False, prog="makemore train")
    pre.add_argument("--model", default=DEFAULT_MODEL)
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    resume_spec = ckpt.read_run_spec(known.resume) if known.resume else None
    model_name = resume_spec.model_name if resume_spec else known.model
    if model_name not in MODELS:
        raise MakemoreError(f"unknown model {model_name!r}; choose from {', '.join(sorted(MODELS))}")
    args = build_train_parser(model_name, resume_spec).parse_args(argv)
    model_config_class = MODELS[model_name].config_class

    if resume_spec is not None:
        given = [f.name for f in config_mod.dataclasses.fields(model_config_class) if hasattr(args, f.name)]
        if given:
            raise MakemoreError(f"cannot change model settings when resuming ({', '.join(given)})")
        run_dir = Path(args.resume)
        train_config = config_mod.from_namespace(
            TrainConfig, args, config_mod.from_dict(TrainConfig, resume_spec.train_config, "run.json: train_config")
        )
        model_config, vocab = resume_spec.model_config, resume_spec.vocab
        splits = {name: ckpt.read_split_items(run_dir, name) for name in ("train", "val", "test")}
        data_info = resume_spec.data
        if not splits["train"]:
            raise MakemoreError(f"{run_dir}: train.txt is missing or empty; cannot resume")
    else:
        train_config = config_mod.from_namespace(TrainConfig, args, model_train_defaults(model_name))
        model_config = config_mod.from_namespace(model_config_class, args)
        if args.max_item_len < 1 or args.samples < 0:
            raise MakemoreError("--max-item-len must be >= 1 and --samples >= 0")
        splits, data_info = load_splits(args, train_config.seed)
        vocab = Vocab.from_texts([item for split in splits.values() for item in split])
        run_dir = Path(args.out) if args.out else default_run_dir(args)

    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    try:
        model = build_model(model_name, model_config, vocab.size)
    except ValueError as error:
        raise MakemoreError(f"--model {model_name}: {error}") from None
    tensors = {name: LineSplit(items, vocab) for name, items in splits.items()}
    spec = ckpt.RunSpec(model_name, model_config, config_mod.to_dict(train_config), vocab, data_info)

    sizes = ", ".join(f"{name} {len(items)}" for name, items in splits.items())
    print(f"data: {data_info['source']} ({sizes} items; vocabulary {vocab.size} symbols incl. boundary)")
    print(f"model: {model_name} {json.dumps(config_mod.to_dict(model_config))}")
    print(f"parameters: {model.parameter_count():,}")

    stop = StopFlag()
    stop.install()
    if resume_spec is None:
        prepare_run_dir(run_dir, args.force)
        ckpt.write_json(run_dir / ckpt.RUN_FILE, spec.to_json())
        ckpt.write_split_items(run_dir, splits)
    trainer = Trainer(model, tensors, train_config, run_dir, should_stop=stop)
    print(f"device: {trainer.device}; run directory: {run_dir}")
    if resume_spec is not None:
        trainer.restore()
        ckpt.write_json(run_dir / ckpt.RUN_FILE, spec.to_json())  # records changed limits, e.g. --max-steps
        print(f"resuming at step {trainer.state.step} of {train_config.max_steps}")
    sys.stdout.flush()
    on_event = progress_printer(train_config.max_steps, trainer.state.step) if model.trainable else (lambda e: None)
    trainer.on_event = on_event
    try:
        result = trainer.train()
    finally:
        getattr(on_event, "close", lambda: None)()
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
    if args.samples:
        generator = torch.Generator(device=trainer.device).manual_seed(train_config.seed)
        items = decode_all(spec.vocab, generate(best, args.samples, max_item_len(spec, splits), generator=generator))
        ckpt.atomic_write(run_dir / "samples.txt", "".join(item + "\n" for item in items).encode("utf-8"))
        print(f"{args.samples} samples (also in {run_dir / 'samples.txt'}):")
        print_samples(items, novelty_sets(run_dir))
    return 0


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
    from .train import resolve_device

    spec, model = ckpt.load_model(run, resolve_device(device))
    return spec, model


def cmd_sample(argv: list[str]) -> int:
    parser = Parser(prog="makemore sample", description="Generate new items from a trained run.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("-n", "--num", type=int, default=20, help="how many items (default: 20)")
    parser.add_argument("--temperature", type=float, default=1.0, help="< 1 sharper, > 1 more varied (default: 1)")
    parser.add_argument("--top-k", type=int, help="sample only among the k most likely characters")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with probability >= p")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely character")
    parser.add_argument("--prefix", default="", help="every item starts with this text")
    parser.add_argument("--max-len", type=int, help="longest item in characters (default: 2x the longest seen)")
    parser.add_argument("--only-new", action="store_true", help="keep only items in none of the data splits")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    args = parser.parse_args(argv)
    if args.num < 1:
        raise MakemoreError("-n must be >= 1")
    if not args.temperature > 0 or args.temperature > 1e6:
        raise MakemoreError("--temperature must be > 0 and finite")
    if args.top_k is not None and args.top_k < 1:
        raise MakemoreError("--top-k must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise MakemoreError("--top-p must be in (0, 1]")
    spec, model = load_run_for_use(args.run, args.device)
    max_len = (
        args.max_len
        if args.max_len is not None
        else max_item_len(spec, {"train": ckpt.read_split_items(args.run, "train")})
    )
    if max_len < 1 or max_len < len(args.prefix):
        raise MakemoreError("--max-len must be >= 1 and at least the prefix length")
    prefix = spec.vocab.encode(args.prefix) if args.prefix else []
    spec.vocab.check(args.prefix, "--prefix")
    generator = torch.Generator(device=model.device)
    generator.manual_seed(args.seed) if args.seed is not None else generator.seed()
    options = DecodeOptions(args.temperature, args.top_k, args.top_p, args.greedy)
    sets = novelty_sets(Path(args.run))
    items: list[str] = []
    attempts = 0
    while len(items) < args.num and attempts < 50:
        batch = decode_all(spec.vocab, generate(model, args.num, max_len, options, prefix, generator))
        items += [item for item in batch if not args.only_new or status_of(item, sets) == "new"]
        attempts += 1
        if not args.only_new:
            break
    if args.only_new and len(items) < args.num:
        print(f"found only {len(items)} new items of {args.num} requested", file=sys.stderr)
        if not items:
            return 1
    print_samples(items[: args.num], sets)
    return 0


def cmd_eval(argv: list[str]) -> int:
    parser = Parser(prog="makemore eval", description="NLL (nats/token), bits/char and perplexity of a run.")
    parser.add_argument("run")
    parser.add_argument("--split", default="all", choices=("train", "val", "test", "all"))
    parser.add_argument("-i", "--input", help="evaluate on this file instead of the run's splits")
    parser.add_argument("--format", default="text", choices=("text", "json"))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise MakemoreError("--batch-size must be >= 1")
    spec, model = load_run_for_use(args.run, args.device)
    if args.input:
        sources = {Path(args.input).name: parse_items(read_text(args.input), args.input, 1 << 20)}
    else:
        names = ("train", "val", "test") if args.split == "all" else (args.split,)
        sources = {name: ckpt.read_split_items(args.run, name) for name in names}
    results = {}
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
    return 0


def cmd_score(argv: list[str]) -> int:
    parser = Parser(prog="makemore score", description="Log-probability of strings under a run's model.")
    parser.add_argument("run")
    parser.add_argument("strings", nargs="+", help="items to score")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if any(not s for s in args.strings):
        raise MakemoreError("cannot score an empty string")
    spec, model = load_run_for_use(args.run, args.device)
    for result in score_items(model, spec.vocab, args.strings):
        chars = " ".join(f"{c}:{lp:.2f}" for c, lp in result["char_logprobs"])
        print(f"{result['item']}\tlogprob {result['logprob']:.4f}\tnll/token {result['nll_per_token']:.4f}\t{chars}")
    return 0


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
}


def usage() -> str:
    lines = ["usage: makemore COMMAND [options]   (makemore COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "models: " + ", ".join(f"{name} ({spec.summary})" for name, spec in MODELS.items())]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from . import __version__

        print(f"makemore {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        raise MakemoreError(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    return command[0](argv[1:])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = run(argv)
    except MakemoreError as error:
        print(f"makemore: error: {error}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("makemore: interrupted", file=sys.stderr)
        code = 130
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"makemore: error: {where}{error.strerror or error}", file=sys.stderr)
        code = EXIT_USAGE
    sys.stdout.flush()
    raise SystemExit(code)


__all__ = ["main", "run"]
