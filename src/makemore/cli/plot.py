"""The `makemore plot` and `makemore export-embeddings` commands (`makemore lr-find` is in cli/lr_find.py).

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

from makemore.data.corpus import MODES
from makemore.data.lines import BOUNDARY
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
    p.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="a data file's kind: line (one item per line), stream (one continuous text: pairs run across lines) "
        "or auto (decide from the file, as train does) (default: auto)",
    )
    _add_output_flags(p, "RUN/plots/bigram.<format> for a run, bigram-<file name>.<format> here for data")

    p = sub.add_parser("embeddings", help="character embeddings in 2-D (raw or PCA), labelled")
    p.add_argument("run", metavar="RUN")
    _add_output_flags(p, "RUN/plots/embeddings.<format>")

    p = sub.add_parser("confusion", help="a labelled run's classifier: confusion matrix on a split (true vs predicted)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="which split (default: val)")
    _add_output_flags(p, "RUN/plots/confusion-<split>.<format>")

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
        "confusion": plot_confusion_command,
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
    from makemore.insight.plots import data_bigram, plot_bigram, run_bigram

    if _is_run(args.source):
        spec, model = _load(args.source)
        picture = run_bigram(args.source, model, spec.vocab, spec.data)
        title = f"Learned P(next | current): {_run_title(args.source, spec.model_name, picture.detail)}"
        path, fmt = _output(args, Path(args.source) / "plots" / "bigram")
    else:
        if Path(args.source).is_dir():
            raise MakemoreError(f"{args.source}: a directory without run.json (expected a run or a text file)")
        picture = data_bigram(args.source, args.max_item_len, args.mode)
        title = f"Character pair counts: {Path(args.source).name} ({picture.detail})"
        path, fmt = _output(args, Path(f"bigram-{Path(args.source).stem}"))
    figure = plot_bigram(picture.matrix, picture.labels, title, picture.kind, args.dpi)
    return _save(figure, path, fmt)


def plot_embeddings_command(args: argparse.Namespace) -> int:
    from makemore.insight.labels import label_embedding_table, label_symbol
    from makemore.insight.plots import embedding_view, plot_embeddings, run_embedding_table, symbol_labels

    spec, model = _load(args.run)
    table = run_embedding_table(spec, model).numpy()  # (V, C)
    symbols = symbol_labels(spec.vocab)
    labels = label_embedding_table(model, table.shape[1]) if spec.data.get("labels") else None
    if labels is not None:  # a labelled run's label vectors, in the characters' space
        table = np.concatenate([table, labels.numpy()])
        symbols += [label_symbol(name) for name in spec.data["labels"]]
    coords, axis_labels = embedding_view(table)
    how = "raw 2-D embeddings" if table.shape[1] <= 2 else f"PCA of {table.shape[1]}-D embeddings"
    title = f"Character embeddings: {_run_title(args.run, spec.model_name, how)}"
    path, fmt = _output(args, Path(args.run) / "plots" / "embeddings")
    return _save(plot_embeddings(coords, symbols, axis_labels, title, args.dpi), path, fmt)


def plot_confusion_command(args: argparse.Namespace) -> int:
    from makemore.api import Run
    from makemore.insight.labels import plot_confusion

    report = Run.load(args.run).evaluate_labels(args.split)[args.split]
    detail = f"{args.split}, accuracy {report['accuracy']:.3f}, {report['items']} items"
    title = f"Confusion: {_run_title(args.run, ckpt.read_run_spec(args.run).model_name, detail)}"
    path, fmt = _output(args, Path(args.run) / "plots" / f"confusion-{args.split}")
    return _save(plot_confusion(report["confusion"], report["labels"], title, args.dpi), path, fmt)


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
    from makemore.insight.plots import run_embedding_table

    spec, model = _load(args.run)
    table = run_embedding_table(spec, model).numpy().astype(np.float32)  # (V, C)
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
