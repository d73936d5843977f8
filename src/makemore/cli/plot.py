"""The `makemore plot`, `makemore lr-find` and `makemore export-embeddings` commands, and `train --lr auto`.

Where images go unless --out says otherwise: a plot of one run goes to RUN/plots/<what>.<format>; a plot of a data
file, of several runs, or the LR sweep goes to the current directory.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from makemore import config as config_mod
from makemore.data.lines import BOUNDARY, LineSplit, Vocab, read_items
from makemore.errors import MakemoreError
from makemore.runs import checkpoint as ckpt

FORMATS = ("png", "svg")


def _parser(prog: str, description: str, **options: Any) -> argparse.ArgumentParser:
    from makemore.cli.common import Parser

    return Parser(prog=prog, description=description, **options)


def _add_output_flags(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", help=f"image file to write (default: {default})")
    parser.add_argument("--format", choices=FORMATS, help="png or svg (default: the --out suffix, else png)")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch (default: 100)")


def _output(args: argparse.Namespace, default: Path) -> tuple[Path, str]:
    suffix = Path(args.out).suffix.lstrip(".").lower() if args.out else ""
    fmt = args.format or suffix or "png"
    if fmt not in FORMATS:
        raise MakemoreError(f"--out {args.out}: unknown image format {fmt!r}; use --format png or svg")
    if args.format and suffix and suffix != args.format:
        raise MakemoreError(f"--out {args.out} does not end in .{args.format} (--format {args.format})")
    if not 10 <= args.dpi <= 1000:
        raise MakemoreError(f"--dpi must be in 10..1000, got {args.dpi}")
    path = Path(args.out) if args.out else default.parent / f"{default.name}.{fmt}"
    return path, fmt


def _save(fig: Any, path: Path, fmt: str) -> int:
    from makemore.insight.plots import save_figure

    print(f"wrote {save_figure(fig, path, fmt)}")
    return 0


def _run_title(run: str, model_name: str, *details: str) -> str:
    """'names-run (mlp, detail)' for titles; the model's name is left out when the directory already says it."""
    name = Path(run).resolve().name
    shown = [d for d in ((model_name,) if model_name != name else ()) + details if d]
    return f"{name} ({', '.join(shown)})" if shown else name


def _is_run(path: str) -> bool:
    return (Path(path) / ckpt.RUN_FILE).is_file()


def _load(run: str, device: str = "cpu"):
    from makemore.cli.common import load_run_for_use

    return load_run_for_use(run, device)


# ---------------------------------------------------------------------------------------------------------- plot


def cmd_plot(argv: list[str]) -> int:
    parser = _parser(
        "makemore plot",
        "Draw a picture of a run or a data file. One run's images go to RUN/plots/ by default, others to the "
        "current directory.",
    )
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True, parser_class=type(parser))

    p = sub.add_parser("loss", help="train and val loss of one or more runs (compare models)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--x", choices=("step", "time"), default="step", help="x axis: step or wall time (default: step)")
    p.add_argument(
        "--smooth",
        type=int,
        default=1,
        help="moving average of the train loss over this many logged points; each logged point is already the "
        "mean over --log-every steps (default: 1)",
    )
    p.add_argument("--label", action="append", help="legend label of each run, in order (default: its directory)")
    _add_output_flags(p, "RUN/plots/loss.<format> for one run, loss-comparison.<format> here for several")

    p = sub.add_parser("bigram", help="pair counts of a data file, or a run's learned next-symbol probabilities")
    p.add_argument("source", metavar="DATA_OR_RUN", help="a text file, a built-in dataset name, or a run directory")
    p.add_argument("--max-item-len", type=int, default=1 << 16, help="longest line accepted from a data file")
    _add_output_flags(p, "RUN/plots/bigram.<format> for a run, bigram-<file name>.<format> here for data")

    p = sub.add_parser("embeddings", help="character embeddings in 2-D (raw or PCA), labelled")
    p.add_argument("run", metavar="RUN")
    _add_output_flags(p, "RUN/plots/embeddings.<format>")

    p = sub.add_parser("activations", help="activation / gradient / update statistics logged with --diagnostics")
    p.add_argument("run", metavar="RUN")
    _add_output_flags(p, "RUN/plots/activations.<format>")

    p = sub.add_parser("attention", help="per-layer, per-head attention maps of an attention model on one item")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--text", default="emma", help="the item to read (default: emma)")
    _add_output_flags(p, "RUN/plots/attention-<text>.<format>")

    args = parser.parse_args(argv)
    return {
        "loss": plot_loss_command,
        "bigram": plot_bigram_command,
        "embeddings": plot_embeddings_command,
        "activations": plot_activations_command,
        "attention": plot_attention_command,
    }[args.what](args)


def plot_loss_command(args: argparse.Namespace) -> int:
    from makemore.insight.plots import plot_loss, read_metrics

    if args.smooth < 1:
        raise MakemoreError("--smooth must be >= 1")
    labels = args.label or []
    if len(labels) > len(args.runs):
        raise MakemoreError(f"{len(labels)} --label given for {len(args.runs)} runs")
    runs = [read_metrics(run, labels[i] if i < len(labels) else None) for i, run in enumerate(args.runs)]
    default = Path(args.runs[0]) / "plots" / "loss" if len(args.runs) == 1 else Path("loss-comparison")
    path, fmt = _output(args, default)
    return _save(plot_loss(runs, args.x, args.smooth, args.dpi), path, fmt)


def plot_bigram_command(args: argparse.Namespace) -> int:
    from makemore.insight.plots import bigram_counts, learned_bigram, plot_bigram, symbol_labels

    if _is_run(args.source):
        spec, model = _load(args.source)
        items = ckpt.read_split_items(args.source, "val")
        split = LineSplit(items, spec.vocab) if items else None
        probs, how = learned_bigram(model, split)
        detail = "asked directly" if how == "direct" else f"averaged over {len(items)} val items"
        title = f"Learned P(next | current): {_run_title(args.source, spec.model_name, detail)}"
        path, fmt = _output(args, Path(args.source) / "plots" / "bigram")
        return _save(plot_bigram(probs, symbol_labels(spec.vocab), title, "probability", args.dpi), path, fmt)
    if Path(args.source).is_dir():
        raise MakemoreError(f"{args.source}: a directory without run.json (expected a run or a text file)")
    items, source = read_items(args.source, args.max_item_len)
    vocab = Vocab.from_texts(items)
    counts = bigram_counts(items, vocab)
    stem = Path(args.source).stem if not source.builtin else args.source
    title = f"Character pair counts: {Path(source.name).name} ({len(items):,} items, {counts.sum():,} pairs)"
    path, fmt = _output(args, Path(f"bigram-{stem}"))
    return _save(plot_bigram(counts, symbol_labels(vocab), title, "count", args.dpi), path, fmt)


def plot_embeddings_command(args: argparse.Namespace) -> int:
    from makemore.insight.plots import embedding_table, embedding_view, plot_embeddings, symbol_labels

    spec, model = _load(args.run)
    table = embedding_table(model).numpy()  # (V, C)
    coords, axis_labels = embedding_view(table)
    how = "raw 2-D embeddings" if table.shape[1] <= 2 else f"PCA of {table.shape[1]}-D embeddings"
    title = f"Character embeddings: {_run_title(args.run, spec.model_name, how)}"
    path, fmt = _output(args, Path(args.run) / "plots" / "embeddings")
    return _save(plot_embeddings(coords, symbol_labels(spec.vocab), axis_labels, title, args.dpi), path, fmt)


def plot_activations_command(args: argparse.Namespace) -> int:
    from makemore.insight.plots import plot_activations
    from makemore.training.diagnostics import DIAGNOSTICS_FILE, read_diagnostics

    spec = ckpt.read_run_spec(args.run)
    records = read_diagnostics(args.run)
    if not records:
        raise MakemoreError(
            f"{Path(args.run) / DIAGNOSTICS_FILE}: no diagnostics; train with --diagnostics to record them"
        )
    title = f"Training diagnostics: {_run_title(args.run, spec.model_name, f'{len(records)} logged steps')}"
    path, fmt = _output(args, Path(args.run) / "plots" / "activations")
    return _save(plot_activations(records, title, args.dpi), path, fmt)


def plot_attention_command(args: argparse.Namespace) -> int:
    from makemore.insight.plots import plot_attention, symbol_labels
    from makemore.models import LanguageModel

    spec, model = _load(args.run)
    if type(model).attention_maps is LanguageModel.attention_maps:
        raise MakemoreError(
            f"the {spec.model_name} model has no attention maps (only attention models, e.g. transformer)"
        )
    if not args.text:
        raise MakemoreError("--text must not be empty")
    spec.vocab.check(args.text, "--text")
    idx = torch.tensor([[BOUNDARY] + spec.vocab.encode(args.text)])  # (1, T): what the model reads for "emma."
    limit = model.context_size
    if limit is not None and idx.size(1) > limit:
        raise MakemoreError(f"--text is {len(args.text)} characters; this model reads at most {limit - 1} at once")
    with torch.no_grad():
        maps = model.attention_maps(idx)
    labels = symbol_labels(spec.vocab)
    tokens = [labels[i] for i in idx[0].tolist()]
    layers = [m[0].float().cpu().numpy() for m in maps]  # each (n_head, T, T)
    title = f'Attention maps: {_run_title(args.run, spec.model_name)} reading "{args.text}"'
    safe = re.sub(r"[^\w-]+", "_", args.text)[:40] or "text"
    path, fmt = _output(args, Path(args.run) / "plots" / f"attention-{safe}")
    return _save(plot_attention(layers, tokens, title, args.dpi), path, fmt)


# ------------------------------------------------------------------------------------------- export-embeddings


def cmd_export_embeddings(argv: list[str]) -> int:
    parser = _parser(
        "makemore export-embeddings",
        "Write a run's character embedding table (one row per vocabulary symbol, row 0 = the item boundary).",
    )
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--format", choices=("csv", "npy"), default="csv", help="csv (with symbols) or npy")
    parser.add_argument("--out", help="file to write (default: RUN/embeddings.<format>)")
    args = parser.parse_args(argv)
    from makemore.insight.plots import embedding_table

    spec, model = _load(args.run)
    table = embedding_table(model).numpy().astype(np.float32)  # (V, C)
    path = Path(args.out) if args.out else Path(args.run) / f"embeddings.{args.format}"
    symbols = ["<boundary>"] + spec.vocab.chars  # characters are single code points, so no clash
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.format == "npy":
            with open(path, "wb") as handle:
                np.save(handle, table)
        else:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "symbol"] + [f"dim_{j}" for j in range(table.shape[1])])
                for i, row in enumerate(table):
                    writer.writerow([i, symbols[i]] + [f"{v:.7g}" for v in row])
    except OSError as error:
        raise MakemoreError(f"{path}: cannot write ({error.strerror or error})") from None
    print(f"wrote {path} ({table.shape[0]} symbols x {table.shape[1]} dimensions)")
    if args.format == "npy":
        print("row 0 is the item boundary; row i >= 1 is the i-th character of run.json's vocab")
    return 0


# ------------------------------------------------------------------------------------------------------ lr-find


def cmd_lr_find(argv: list[str]) -> int:
    from makemore.models import DEFAULT_MODEL, MODELS
    from makemore.training.launch import load_splits, model_train_defaults
    from makemore.training.trainer import TrainConfig

    pre = _parser("makemore lr-find", "", add_help=False)  # --model decides the model flags of the full parser
    pre.add_argument("--model", default=DEFAULT_MODEL)
    known, _ = pre.parse_known_args(argv)
    if known.model not in MODELS:
        raise MakemoreError(f"unknown model {known.model!r}; choose from {', '.join(sorted(MODELS))}")
    parser = _parser(
        "makemore lr-find",
        "Learning-rate range test (Smith 2017): train a fresh model for a few hundred steps with the learning rate "
        "growing exponentially, plot loss against learning rate, and suggest one: half the learning rate at which "
        "the smoothed loss is lowest. Training flags (optimizer, batch size, ...) are those of `train`.",
    )
    parser.add_argument("-i", "--input", default="first-names", help="a text file or a built-in dataset")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions; the sweep uses train")
    parser.add_argument("--max-item-len", type=int, default=256)
    parser.add_argument("--model", default=known.model, choices=sorted(MODELS))
    parser.add_argument("--min-lr", type=float, default=1e-5, help="first learning rate (default: 1e-5)")
    parser.add_argument("--max-lr", type=float, default=10.0, help="last learning rate (default: 10)")
    parser.add_argument("--steps", type=int, default=300, help="sweep length in steps (default: 300)")
    _add_output_flags(parser, "lr-find-<model>.<format> in the current directory")
    skip = {"lr", "max_steps", "time_budget", "schedule", "warmup_steps", "min_lr_ratio", "step_decay_at"}
    skip |= {"eval_every", "eval_batch_size", "patience", "log_every", "diagnostics", "tensorboard"}
    training = parser.add_argument_group("training")
    base = model_train_defaults(known.model)
    _add_flags_except(training, TrainConfig, base, skip)
    config_mod.add_flags(parser.add_argument_group(f"model {known.model!r}"), MODELS[known.model].config_class)
    args = parser.parse_args(argv)
    train_config = config_mod.from_namespace(TrainConfig, args, base)
    model_config = config_mod.from_namespace(MODELS[known.model].config_class, args)
    args.val_file = args.test_file = None
    splits, info = load_splits(args, train_config.seed)
    vocab = Vocab.from_texts([item for split in splits.values() for item in split])
    train = LineSplit(splits["train"], vocab)
    result = run_lr_find(known.model, model_config, vocab, train, train_config, args)
    print(describe(result))
    from makemore.insight.plots import plot_lr_find

    path, fmt = _output(args, Path(f"lr-find-{known.model}"))
    title = f"Learning-rate finder: {known.model} on {Path(info['source']).name}"
    return _save(plot_lr_find(result, title, args.dpi), path, fmt)


def _add_flags_except(group: Any, cls: type, base: Any, skip: set[str]) -> None:
    """config.add_flags for all fields of `cls` but `skip` (flags that make no sense for a sweep)."""
    probe = argparse.ArgumentParser(add_help=False)
    config_mod.add_flags(probe, cls, base)
    for action in probe._actions:
        if action.dest not in skip:
            group._add_action(action)


def run_lr_find(model_name: str, model_config: Any, vocab: Vocab, train: Any, train_config: Any, args: Any = None):
    """Build a fresh model (seeded as training would) and sweep on the `train` split (any split the trainer takes:
    line or stream); returns an LRFindResult."""
    from makemore.models import build_model
    from makemore.training.lr_finder import find_lr

    torch.manual_seed(train_config.seed)
    try:
        model = build_model(model_name, model_config, vocab.size)
    except ValueError as error:
        raise MakemoreError(f"--model {model_name}: {error}") from None
    if not model.trainable:
        raise MakemoreError(f"--model {model_name} is fitted in closed form: it has no learning rate to find")
    options = {}
    if args is not None:
        options = {"min_lr": args.min_lr, "max_lr": args.max_lr, "steps": args.steps}
    return find_lr(model, train, train_config, **options)


def describe(result: Any) -> str:
    ending = "stopped at divergence" if result.stopped == "diverged" else "no divergence"
    return (
        f"lr-find: {len(result.lrs)} steps from {result.min_lr:.1e} to {result.lrs[-1]:.1e} ({ending}); "
        f"lowest smoothed loss {min(result.smoothed):.3f} at lr {result.lrs[int(np.argmin(result.smoothed))]:.1e}; "
        f"suggested lr {result.suggestion:.2e} (half the lr of the lowest smoothed loss)"
    )


# ------------------------------------------------------------------------------------------------- --lr auto


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


def resolve_auto_lr(model_name: str, model_config: Any, vocab: Vocab, train: Any, train_config: Any):
    """`train --lr auto`: run the default sweep with the training settings and return them with its suggestion."""
    result = run_lr_find(model_name, model_config, vocab, train, train_config)
    lr = float(f"{result.suggestion:.3g}")
    print(describe(result))
    print(f"--lr auto: training with lr {lr:g}")
    return config_mod.replace(train_config, lr=lr)
