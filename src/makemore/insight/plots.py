"""Pictures of what a model learned: loss curves, bigram heatmaps, embedding scatters, the LR sweep, activation
statistics and attention maps. One style for all of them.

Two layers: functions that compute what to draw from runs and data (NumPy/PyTorch only, tested without
matplotlib), and `plot_*` functions that draw it on a matplotlib `Figure` built directly, never through pyplot, so
nothing needs a display (rendering goes through the Agg canvas). Figures have a fixed size in inches and are saved
without "tight" cropping, so an image is always figsize x dpi pixels; constrained layout keeps text inside.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from makemore.data.lines import BOUNDARY, IGNORE, LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.runs import checkpoint as ckpt

DPI = 100
MAX_LABELLED_VOCAB = 40  # above this a bigram heatmap has no per-cell labels, only axis ticks
MAX_LINES = 8  # per panel of the activations plot; more layers are thinned evenly
STYLE: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "figure.titlesize": 15,
    "figure.titleweight": "bold",
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": None,  # filled in by `style()` with matplotlib's tab10
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "image.cmap": "Blues",
}
VOWELS = set("aeiouy")


# ------------------------------------------------------------------------------------------------------ figures


def style() -> Any:
    """A context manager with the common style (rcParams) for every figure of this module."""
    import matplotlib as mpl
    from cycler import cycler

    params = dict(STYLE)
    params["axes.prop_cycle"] = cycler(color=list(mpl.colormaps["tab10"].colors))
    return mpl.rc_context(params)


def new_figure(width: float, height: float, dpi: int = DPI) -> Any:
    """A Figure with an Agg canvas and constrained layout (titles and labels are never clipped)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, fmt: str | None = None) -> Path:
    """Write the figure as PNG or SVG (from `fmt`, else the file's suffix); creates the parent directory."""
    path = Path(path)
    fmt = fmt or (path.suffix.lstrip(".").lower() or "png")
    if fmt not in ("png", "svg"):
        raise MakemoreError(f"{path}: unsupported image format {fmt!r} (png or svg)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "svg":
            fig.savefig(path, format="svg", dpi=fig.dpi)
        else:
            _save_png(fig, path)
    except OSError as error:
        raise MakemoreError(f"{path}: cannot write the image ({error.strerror or error})") from None
    return path


def _save_png(fig: Any, path: Path) -> None:
    """PNG with a 256-colour adaptive palette: a third of the size of full RGB for these flat-colour figures (the
    labelled bigram heatmap drops from ~490 KB to ~150 KB) with no visible difference."""
    import io

    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def symbol_labels(vocab: Vocab) -> list[str]:
    """Printable label of each token id: the boundary is '.' (as in the lectures), or '·' when '.' is a character."""
    shown = {" ": "␣", "\t": "⇥", "\n": "↵", "\r": "⇤", "\xa0": "⍽"}  # glyphs DejaVu Sans (the default) has
    boundary = "·" if "." in vocab.stoi else "."
    return [boundary] + [shown.get(c, c if c.isprintable() else "�") for c in vocab.chars]


def _format_lr(lr: float) -> str:
    return f"{lr:.2e}".replace("e-0", "e-").replace("e+0", "e+")


# --------------------------------------------------------------------------------------------------------- loss


@dataclass
class RunMetrics:
    """The train and eval lines of one run's metrics.jsonl, as arrays."""

    label: str
    train_step: np.ndarray
    train_time: np.ndarray
    train_loss: np.ndarray
    val_step: np.ndarray
    val_time: np.ndarray
    val_loss: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def read_metrics(run_dir: str | Path, label: str | None = None) -> RunMetrics:
    """A run's logged losses. A resumed run may log a step twice: the later line wins."""
    run_dir = Path(run_dir)
    path = run_dir / ckpt.METRICS_FILE
    if not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: no such run directory")
    if not path.exists():
        raise MakemoreError(f"{path}: missing (not a makemore run, or it logged nothing yet)")
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill (or garbage: the log is data, never trusted)
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            continue
        if record.get("event") == "train" and "train_loss" in record:
            train[int(record["step"])] = record
        elif record.get("event") == "eval" and "val_loss" in record:
            evals[int(record["step"])] = record
    if not train and not evals:
        raise MakemoreError(f"{path}: no train or eval lines to plot")
    if label is None:
        label = run_dir.resolve().name
        try:
            label += f" ({ckpt.read_run_spec(run_dir).model_name})"
        except MakemoreError:
            pass

    def column(rows: dict[int, dict], key: str) -> np.ndarray:
        return np.array([float(rows[s].get(key, math.nan)) for s in sorted(rows)], dtype=float)

    return RunMetrics(
        label=label,
        train_step=np.array(sorted(train), dtype=float),
        train_time=column(train, "elapsed"),
        train_loss=column(train, "train_loss"),
        val_step=np.array(sorted(evals), dtype=float),
        val_time=column(evals, "elapsed"),
        val_loss=column(evals, "val_loss"),
    )


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start): smoothing never looks ahead."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values.copy()
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(1, len(values) + 1)
    lo = np.maximum(index - window, 0)
    return (cumsum[index] - cumsum[lo]) / (index - lo)


def plot_loss(runs: list[RunMetrics], x: str = "step", smooth: int = 1, dpi: int = DPI) -> Any:
    """Train (optionally smoothed) and val loss of several runs against step or wall time, one colour per run."""
    with style():
        fig = new_figure(11, 6.5, dpi)
        ax = fig.add_subplot()
        legend: list[list[Any]] = []  # per run: its train and val lines
        shown: list[float] = []  # the values the view must show (all but the first tenth of each train curve)
        for i, run in enumerate(runs):
            color = f"C{i % 10}"
            tx = run.train_step if x == "step" else run.train_time
            vx = run.val_step if x == "step" else run.val_time
            valid = ~np.isnan(run.val_loss)
            best = float(np.nanmin(run.val_loss)) if valid.any() else math.nan
            lines = []
            if len(run.train_loss) == 0 and valid.any():  # fitted in closed form: one val loss, no curve
                lines.append(
                    ax.axhline(best, color=color, linestyle=":", linewidth=2, label=f"{run.label}  val {best:.3f}")
                )
                shown.append(best)
            if len(run.train_loss):
                smoothed = moving_average(run.train_loss, smooth)
                if smooth > 1:
                    ax.plot(tx, run.train_loss, color=color, alpha=0.25, linewidth=1)
                label = f"{run.label}  train" + (f" ({smooth}-point average)" if smooth > 1 else "")
                lines += ax.plot(tx, smoothed, color=color, linewidth=1.8, label=label)
                # The first logged losses (near ln V) would squash the interesting end of the curves: the view
                # starts showing train loss from a tenth of the way in (the curve still runs off the top).
                shown += smoothed[len(smoothed) // 10 :].tolist()
            if valid.any() and len(run.train_loss):
                lines += ax.plot(
                    vx[valid],
                    run.val_loss[valid],
                    color=color,
                    linestyle="--",
                    marker="o",
                    markersize=4,
                    linewidth=1.5,
                    label=f"{run.label}  val (best {best:.3f})",
                )
                shown += run.val_loss[valid].tolist()
            legend.append(lines)
        finite = [v for v in shown if math.isfinite(v)]
        if finite:
            low, top = min(finite), max(max(finite), min(finite) + 0.05)
            margin = 0.05 * (top - low)
            ax.set_ylim(low - margin, top + margin)
        ax.set_xlabel("step" if x == "step" else "wall time (s)")
        ax.set_ylabel("loss (mean NLL, nats per character)")
        ax.set_title("Training and validation loss" + (" against wall time" if x == "time" else ""))
        _legend_by_run(fig, legend)
    return fig


def _legend_by_run(fig: Any, legend: list[list[Any]]) -> None:
    """The legend outside the axes (curves of several runs fill the plot area): below it with one column per run
    (its train and val lines) for up to four runs, beside it for more."""
    from matplotlib.lines import Line2D

    if len(legend) > 4:
        fig.legend(handles=[line for lines in legend for line in lines], loc="outside right upper")
        return
    rows = max(len(lines) for lines in legend)
    blank = Line2D([], [], alpha=0, label=" ")
    # legend fills column by column: pad every run to the same number of lines so each column is one run
    handles = [line for lines in legend for line in lines + [blank] * (rows - len(lines))]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(legend))


# ------------------------------------------------------------------------------------------------------- bigram


def bigram_counts(items: list[str], vocab: Vocab) -> np.ndarray:
    """(V, V) counts of (this symbol, next symbol) over items framed by the boundary token: . e m m a ."""
    V = vocab.size
    counts = np.zeros((V, V), dtype=np.int64)
    for item in items:
        ids = [BOUNDARY] + vocab.encode(item) + [BOUNDARY]
        np.add.at(counts, (ids[:-1], ids[1:]), 1)
    return counts


@torch.no_grad()
def learned_bigram(model: Any, split: LineSplit | None, batch_size: int = 512) -> tuple[np.ndarray, str]:
    """(V, V) next-symbol probabilities P(next | current) learned by any model, and how they were obtained.

    A model that sees at most one symbol of context is asked directly, row by row. A longer-context model's
    P(next | current) depends on what came before, so its predictions are averaged over every position of `split`
    by the symbol just read; a symbol that never occurs there has a row of NaN.
    """
    V = model.vocab_size
    device = model.device
    model.eval()
    if model.context_size is not None and model.context_size <= 1:
        logits, _ = model(torch.arange(V, device=device)[:, None])  # (V, 1, V)
        return F.softmax(logits[:, -1].float(), dim=-1).cpu().numpy(), "direct"
    if split is None or len(split) == 0:
        raise MakemoreError("this model has a context longer than one symbol and the run has no val items to average")
    sums = torch.zeros(V, V, dtype=torch.float64)
    seen = torch.zeros(V, dtype=torch.float64)
    for x, y in split.eval_batches(batch_size):
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)  # (B, T, V)
        real = y != IGNORE
        probs = F.softmax(logits[real].float(), dim=-1).double().cpu()  # (positions, V)
        current = x[real].cpu()  # (positions,) the symbol just read
        sums.index_add_(0, current, probs)
        seen.index_add_(0, current, torch.ones_like(current, dtype=torch.float64))
    probs = (sums / seen[:, None]).numpy()
    probs[seen.numpy() == 0] = np.nan
    return probs, "averaged over val"


def bigram_figure_size(V: int) -> tuple[float, float]:
    """Inches: half an inch per labelled cell (room for the pair and its value), plus the colour bar and title."""
    side = 0.5 * V + 2.0 if V <= MAX_LABELLED_VOCAB else 13.0
    return side + 1.0, side


def plot_bigram(matrix: np.ndarray, labels: list[str], title: str, kind: str = "count", dpi: int = DPI) -> Any:
    """A V x V heatmap, rows = current symbol, columns = next. Up to 40 symbols each cell shows its pair and value
    (Karpathy's lecture 1 figure); above that, an unlabelled heatmap with ticks."""
    from matplotlib.colors import PowerNorm

    V = len(labels)
    labelled = V <= MAX_LABELLED_VOCAB
    with style():
        width, height = bigram_figure_size(V)
        fig = new_figure(width, height, dpi)
        ax = fig.add_subplot()
        ax.grid(False)
        values = np.ma.masked_invalid(matrix.astype(float))
        # Square-root colour scale: pair counts span four orders of magnitude; on a linear scale only the few
        # most frequent pairs would show any colour.
        vmax = float(values.max()) if values.count() else 1.0
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
        cmap = _cmap("Blues", bad="#dddddd")
        image = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01)
        bar.set_label(("count" if kind == "count" else "probability") + " (square-root colour scale)")
        if labelled:
            fontsize = 9 if V <= 30 else 7
            for i in range(V):
                for j in range(V):
                    value = matrix[i, j]
                    if kind == "count":
                        text = f"{int(value)}"
                    else:
                        text = "–" if not math.isfinite(value) else f"{value:.2f}".lstrip("0") or "0"
                    dark = math.isfinite(value) and norm(value) > 0.55
                    color = "white" if dark else "#333333"
                    # One two-line text per cell (drawing V^2 texts is most of the time); in_layout=False: the
                    # cells sit inside the axes, so the layout engine need not measure them.
                    pair = labels[i] + labels[j]
                    ax.text(
                        j,
                        i,
                        f"{pair}\n{text}",
                        ha="center",
                        va="center",
                        fontsize=fontsize,
                        color=color,
                        linespacing=1.3,
                        in_layout=False,
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("next symbol  (each cell: pair, then " + ("count)" if kind == "count" else "P(next | row))"))
            ax.set_ylabel("current symbol")
            for spine in ax.spines.values():
                spine.set_visible(False)
        else:
            every = max(1, math.ceil(V / 100))
            ticks = list(range(0, V, every))
            fontsize = 7 if V <= 70 else 5
            ax.set_xticks(ticks, [labels[t] for t in ticks], fontsize=fontsize)
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=fontsize)
            ax.tick_params(length=2, pad=1)
            ax.set_xlabel("next symbol")
            ax.set_ylabel("current symbol")
        ax.set_title(title)
    return fig


def _cmap(name: str, bad: str) -> Any:
    import matplotlib as mpl

    return mpl.colormaps[name].with_extremes(bad=bad)


# --------------------------------------------------------------------------------------------------- embeddings


def embedding_table(model: nn.Module) -> torch.Tensor:
    """The (V, C) character embedding table of any model: its `wte` attribute when that is an nn.Embedding (the
    usual name), else its only nn.Embedding with one row per vocabulary symbol."""
    wte = getattr(model, "wte", None)
    if isinstance(wte, nn.Embedding):
        return wte.weight.detach().float().cpu()
    vocab_size = getattr(model, "vocab_size", None)
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size]
    if len(tables) == 1:
        return tables[0].weight.detach().float().cpu()
    name = type(model).__name__
    if not tables:
        raise MakemoreError(f"the {name} model has no character embedding table (no nn.Embedding over the vocabulary)")
    raise MakemoreError(f"the {name} model has {len(tables)} embedding tables over the vocabulary; name one `wte`")


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, D) points on their first two principal components.

    Returns the (N, 2) coordinates and the share of the total variance each component explains. Computed by SVD of
    the centred data: X - mean = U S Vt, coordinates U S, variance shares S^2 / sum S^2 (Pearson 1901).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 2:
        raise MakemoreError(f"PCA needs at least 2 points in at least 2 dimensions, got shape {points.shape}")
    centred = points - points.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    # SVD signs are arbitrary: make each component's largest loading positive so the picture is reproducible.
    signs = np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(axis=1)])
    signs[signs == 0] = 1
    coords = u[:, :2] * s[:2] * signs
    total = float((s**2).sum())
    explained = (s[:2] ** 2) / total if total > 0 else np.zeros(2)
    return coords, explained


def embedding_view(table: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """2-D coordinates of an embedding table and the axis labels: raw when it has 2 dimensions, PCA otherwise."""
    if table.shape[1] == 2:
        return table.astype(np.float64), ["embedding dimension 0", "embedding dimension 1"]
    if table.shape[1] == 1:
        return np.stack([table[:, 0], np.zeros(len(table))], axis=1), ["embedding dimension 0", ""]
    coords, explained = pca_2d(table)
    return coords, [f"PC{i + 1} ({100 * explained[i]:.1f}% of variance)" for i in range(2)]


def symbol_group(label: str, index: int) -> str:
    if index == BOUNDARY:
        return "boundary"
    if label.lower() in VOWELS:
        return "vowel (a e i o u y)"
    if label.isalpha():
        return "consonant"
    return "digit" if label.isdigit() else "other"


def plot_embeddings(coords: np.ndarray, labels: list[str], axis_labels: list[str], title: str, dpi: int = DPI) -> Any:
    """Each symbol as a labelled disc at its 2-D position, coloured by kind (vowel, consonant, boundary, ...)."""
    groups = [symbol_group(label, i) for i, label in enumerate(labels)]
    palette = {"vowel (a e i o u y)": "C3", "consonant": "C0", "boundary": "C2", "digit": "C4", "other": "C1"}
    many = len(labels) > 60
    with style():
        fig = new_figure(9.5, 8.5, dpi)
        ax = fig.add_subplot()
        for group, color in palette.items():
            rows = [i for i, g in enumerate(groups) if g == group]
            if rows:
                ax.scatter(
                    coords[rows, 0], coords[rows, 1], s=120 if many else 420, color=color, alpha=0.9, label=group
                )
        for (px, py), label in zip(coords, labels):
            ax.text(px, py, label, ha="center", va="center", color="white", fontsize=8 if many else 12, weight="bold")
        ax.margins(0.08)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.set_title(title)
        ax.legend(loc="best", markerscale=0.5)
    return fig


# ------------------------------------------------------------------------------------------------- LR finder


def plot_lr_find(result: Any, title: str, dpi: int = DPI) -> Any:
    """Loss against learning rate (log axis): raw batch losses, the smoothed curve, and the suggestion."""
    lrs, losses, smoothed = np.array(result.lrs), np.array(result.losses), np.array(result.smoothed)
    with style():
        fig = new_figure(10, 6, dpi)
        ax = fig.add_subplot()
        ax.plot(lrs, losses, color="C0", alpha=0.3, linewidth=1, label="batch loss")
        ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed (centred moving average)")
        lowest = int(np.argmin(smoothed))
        ax.plot(
            lrs[lowest], smoothed[lowest], "v", color="C3", markersize=9, label=f"minimum at {_format_lr(lrs[lowest])}"
        )
        ax.axvline(result.suggestion, color="C2", linestyle="--", linewidth=1.5)
        ax.plot(
            result.suggestion,
            smoothed[result.suggestion_index],
            "o",
            color="C2",
            markersize=9,
            label=f"suggested lr {_format_lr(result.suggestion)} (half the minimum's lr)",
        )
        ax.set_xscale("log")
        ax.set_xlim(lrs[0] / 1.5, lrs[-1] * 1.5)  # the range swept, not the one asked for when it stopped early
        # Diverged losses can be huge: keep the view on the useful part of the curve.
        top = max(float(smoothed[: lowest + 1].max()), float(losses[:5].mean())) if len(losses) else 1.0
        bottom = float(min(smoothed.min(), np.percentile(losses, 1)))
        ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.25 * (top - bottom))
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss (nats per character)")
        ending = "stopped at divergence" if result.stopped == "diverged" else "full sweep"
        ax.set_title(f"{title}\n{len(lrs)} steps, {_format_lr(result.min_lr)} to {_format_lr(lrs[-1])} ({ending})")
        ax.legend(loc="upper left")
    return fig


# ------------------------------------------------------------------------------------------------- diagnostics


def _thin(names: list[str], limit: int = MAX_LINES) -> list[str]:
    if len(names) <= limit:
        return names
    keep = np.linspace(0, len(names) - 1, limit).round().astype(int)
    return [names[i] for i in sorted(set(keep.tolist()))]


def _density(ax: Any, stats: dict[str, Any], label: str, color: str) -> None:
    counts = np.array(stats["counts"], dtype=float)
    if not len(counts) or not stats["n"]:
        return
    edges = np.linspace(stats["min"], stats["max"], len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    width = max(edges[1] - edges[0], 1e-30)
    ax.plot(centres, counts / (counts.sum() * width), color=color, linewidth=1.6, label=label)


def activation_layers(record: dict[str, Any]) -> list[str]:
    """The names worth a histogram: nonlinearity outputs if the model has such modules, else Dropout inputs (where
    functional activations show), else every hooked layer."""
    entries = record["activations"]
    nonlinear = [e["name"] for e in entries if e["kind"] in _ACTIVATION_KINDS]
    if nonlinear:
        return nonlinear
    dropout = [e["name"] for e in entries if e["kind"].endswith(" input")]
    return dropout or [e["name"] for e in entries]


_ACTIVATION_KINDS = {"Tanh", "ReLU", "GELU", "SiLU", "Sigmoid", "LeakyReLU", "ELU", "Softsign", "Hardtanh"}


def plot_activations(records: list[dict[str, Any]], title: str, dpi: int = DPI) -> Any:
    """Six panels from --diagnostics records: activation and activation-gradient histograms (last step), tanh
    saturation and dead units over training, weight-gradient histograms (last step), update:data ratios and
    activation standard deviations over training."""
    last = records[-1]
    steps = [r["step"] for r in records]
    chosen = _thin(activation_layers(last))
    by_name = {e["name"]: e for e in last["activations"]}
    colors = {name: f"C{i % 10}" for i, name in enumerate(chosen)}
    with style():
        fig = new_figure(18, 11.5, dpi)
        axes = fig.subplots(2, 3)
        fig.suptitle(title)

        ax = axes[0, 0]
        for name in chosen:
            e = by_name[name]
            extra = f", saturated {100 * e['saturated']:.1f}%" if e.get("saturated") is not None else ""
            _density(ax, e, f"{_layer(e)}: mean {e['mean']:+.2f}, std {e['std']:.2f}{extra}", colors[name])
        ax.set_title(f"Activations at step {last['step']}")
        ax.set_xlabel("activation value")
        ax.set_ylabel("density")
        ax.legend(loc="upper center", fontsize=8)

        ax = axes[0, 1]
        for name in chosen:
            grad = by_name[name].get("grad")
            if grad and grad.get("n"):
                _density(ax, grad, f"{_layer(by_name[name])}: std {grad['std']:.2e}", colors[name])
        ax.set_title(f"Gradients of those activations at step {last['step']}")
        ax.set_xlabel("gradient value")
        ax.set_ylabel("density")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        if ax.lines:
            ax.legend(loc="upper right", fontsize=8)

        ax = axes[0, 2]
        tracked = [n for n in chosen if by_name[n].get("saturated") is not None or by_name[n].get("dead") is not None]
        for name in tracked:
            label = _layer(by_name[name])
            if by_name[name].get("saturated") is not None:
                sat = [100 * _entry(r, name, "saturated") for r in records]
                ax.plot(steps, sat, color=colors[name], linewidth=1.6, label=f"{label}: saturated")
            dead = [100 * _entry(r, name, "dead") for r in records]
            ax.plot(steps, dead, color=colors[name], linestyle="--", label=f"{label}: dead units")
        if tracked:
            ax.set_title("Saturation (|x| > 0.97) and dead units")
            ax.set_ylabel("% of values / % of units")
        else:  # no tanh- or ReLU-like layer (e.g. GELU): show how gradients flow into each layer instead
            for name in chosen:
                grads = [_grad_std(r, name) for r in records]
                ax.plot(steps, grads, color=colors[name], linewidth=1.6, label=_layer(by_name[name]))
            ax.set_yscale("log")
            ax.set_title("Gradient std of those activations")
            ax.set_ylabel("std (log scale)")
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(loc="best", fontsize=8)

        params = [p["name"] for p in last["params"]]
        shown_params = _thin(params)
        param_colors = {name: f"C{i % 10}" for i, name in enumerate(shown_params)}
        by_param = {p["name"]: p for p in last["params"]}

        ax = axes[1, 0]
        for name in shown_params:
            p = by_param[name]
            ratio = p.get("grad_data_ratio")
            label = f"{name}: {ratio:.1e}" if ratio else name
            _density(ax, p, label, param_colors[name])
        ax.set_title(f"Weight gradients at step {last['step']}" + _of(shown_params, params))
        ax.text(0.02, 0.97, "legend: std(grad) / std(weight)", transform=ax.transAxes, va="top", fontsize=9)
        ax.set_xlabel("gradient value")
        ax.set_ylabel("density")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        if ax.lines:
            _legend_below(ax)

        ax = axes[1, 1]
        for name in shown_params:
            ratios = [_param(r, name, "update_ratio") for r in records]
            logs = [math.log10(v) if v and v > 0 else math.nan for v in ratios]
            ax.plot(steps, logs, color=param_colors[name], linewidth=1.6, label=name)
        ax.axhline(-3, color="black", linestyle=":", linewidth=1.2, label="1e-3 (rule of thumb)")
        ax.set_title("Update:data ratio" + _of(shown_params, params))
        ax.set_xlabel("step")
        ax.set_ylabel("log10 std(update) / std(weight)")
        _legend_below(ax)

        ax = axes[1, 2]
        every = _thin([e["name"] for e in last["activations"]])
        for i, name in enumerate(every):
            label = _layer(by_name[name])
            ax.plot(steps, [_entry(r, name, "std") for r in records], color=f"C{i % 10}", linewidth=1.6, label=label)
        stds = [v for line in ax.lines for v in line.get_ydata() if math.isfinite(v) and v > 0]
        wide = bool(stds) and max(stds) > 10 * min(stds)
        if wide:  # layers' scales differ by orders of magnitude (embeddings, logits, ...)
            ax.set_yscale("log")
        ax.set_title("Activation std per layer" + _of(every, list(by_name)))
        ax.set_xlabel("step")
        ax.set_ylabel("std (log scale)" if wide else "std")
        _legend_below(ax)
    return fig


def _legend_below(ax: Any) -> None:
    """A legend under the axes, in two columns: per-layer curves fill the whole panel, so any spot inside hides one."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize=8)


def _layer(entry: dict[str, Any]) -> str:
    """A layer's legend name; a Dropout's input is the activation computed just before it (e.g. a tanh)."""
    return f"input of {entry['name']}" if entry["kind"].endswith(" input") else entry["name"]


def _of(shown: list[str], every: list[str]) -> str:
    return f" ({len(shown)} of {len(every)})" if len(shown) < len(every) else ""


def _entry(record: dict[str, Any], name: str, key: str) -> float:
    for e in record["activations"]:
        if e["name"] == name and e.get(key) is not None:
            return float(e[key])
    return math.nan


def _grad_std(record: dict[str, Any], name: str) -> float:
    for e in record["activations"]:
        if e["name"] == name and e.get("grad") and e["grad"].get("n"):
            return float(e["grad"]["std"])
    return math.nan


def _param(record: dict[str, Any], name: str, key: str) -> float | None:
    for p in record["params"]:
        if p["name"] == name:
            return p.get(key)
    return None


# ---------------------------------------------------------------------------------------------------- attention


def plot_attention(maps: list[np.ndarray], tokens: list[str], title: str, dpi: int = DPI) -> Any:
    """A grid of attention maps, one row per layer and one column per head; maps[l] is (n_head, T, T), row t =
    the query at position t (the symbol just read), column s = how much it attends to position s."""
    n_layer, n_head = len(maps), maps[0].shape[0]
    T = len(tokens)
    cell = max(2.2, min(3.2, 0.32 * T + 1.0))
    with style():
        fig = new_figure(cell * n_head + 1.4, cell * n_layer + 1.0, dpi)
        axes = np.atleast_2d(fig.subplots(n_layer, n_head, squeeze=False))
        fig.suptitle(title)
        image = None
        fontsize = 10 if T <= 12 else 7
        for layer in range(n_layer):
            for head in range(n_head):
                ax = axes[layer, head]
                ax.grid(False)
                image = ax.imshow(maps[layer][head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
                # symbols on the outer edges only: the maps share their axes, and inner labels would crowd titles
                ax.set_xticks(range(T), tokens if layer == n_layer - 1 else [], fontsize=fontsize)
                ax.set_yticks(range(T), tokens if head == 0 else [], fontsize=fontsize)
                ax.tick_params(length=0, pad=2)
                ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=11, fontweight="normal")
                if head == 0:
                    ax.set_ylabel("query (symbol read)")
                if layer == n_layer - 1:
                    ax.set_xlabel("key (attended to)")
        bar = fig.colorbar(image, ax=axes, shrink=0.6, pad=0.02)
        bar.set_label("attention weight")
    return fig
