"""Bigram pictures: pair counts of a data file (items, or one continuous text) and the next-symbol probabilities a
trained model learned, as a labelled V x V heatmap."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from makemore.data.lines import BOUNDARY, BUILTIN_DATASETS, IGNORE, LineSplit, Vocab, read_items
from makemore.errors import MakemoreError
from makemore.insight.figures import DPI, cmap_with_bad, new_figure, style, symbol_labels
from makemore.runs import checkpoint as ckpt

MAX_LABELLED_VOCAB = 40  # above this a bigram heatmap has no per-cell labels, only axis ticks


def bigram_counts(items: list[str], vocab: Vocab) -> np.ndarray:
    """(V, V) counts of (this symbol, next symbol) over items framed by the boundary token: . e m m a ."""
    V = vocab.size
    counts = np.zeros((V, V), dtype=np.int64)
    for item in items:
        ids = [BOUNDARY] + vocab.encode(item) + [BOUNDARY]
        np.add.at(counts, (ids[:-1], ids[1:]), 1)
    return counts


def stream_bigram_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, V) counts of consecutive characters of one continuous text (stream mode: line breaks are characters,
    not item boundaries). `ids` is a stream corpus' ids: ids[0] is the start of the text, which pairs with
    nothing; the boundary row and column stay 0."""
    text = np.asarray(ids[1:], dtype=np.int64)
    pairs = text[:-1] * vocab_size + text[1:]  # one bincount over pair codes: fast on megabytes of text
    return np.bincount(pairs, minlength=vocab_size * vocab_size).reshape(vocab_size, vocab_size)


@torch.no_grad()
def learned_bigram(model: Any, split: Any, batch_size: int = 512) -> tuple[np.ndarray, str]:
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
        cmap = cmap_with_bad("Blues", bad="#dddddd")
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


@dataclass
class BigramPicture:
    """What a bigram heatmap shows: the (V, V) matrix, the symbol of each row/column, and how it was made."""

    matrix: np.ndarray
    labels: list[str]
    kind: str  # "count" or "probability"
    detail: str  # for the title, e.g. "4,213 items, 30,512 pairs"
    mode: str  # "line" or "stream"


def data_bigram(source: str, max_item_len: int = 1 << 16, mode: str = "auto") -> BigramPicture:
    """Pair counts of a data file or built-in dataset. A list of items (line mode) is counted item by item, framed
    by the boundary; running text (stream mode, as `train --mode auto` would decide) is one continuous text whose
    line breaks are characters, so its pairs run across lines."""
    from makemore.data.corpus import detect_mode, read_corpus

    is_file = Path(source).exists() or source not in BUILTIN_DATASETS
    if mode == "auto":
        mode = detect_mode(source, max_item_len)[0] if is_file else "line"
    if mode == "stream":
        corpus = read_corpus(source)
        counts = stream_bigram_counts(corpus.ids, corpus.vocab.size)
        detail = f"{corpus.n_chars:,} characters of running text, {int(counts.sum()):,} pairs"
        return _drop_boundary(BigramPicture(counts, symbol_labels(corpus.vocab), "count", detail, mode))
    items, _ = read_items(source, max_item_len)
    vocab = Vocab.from_texts(items)
    counts = bigram_counts(items, vocab)
    detail = f"{len(items):,} items, {int(counts.sum()):,} pairs"
    return BigramPicture(counts, symbol_labels(vocab), "count", detail, "line")


def run_bigram(run_dir: str | Path, model: Any, vocab: Vocab, data: dict[str, Any]) -> BigramPicture:
    """A run's learned P(next | current), averaged over its val split (val items, or a stream run's val stretch of
    its text) when the model reads more than one symbol."""
    stream = data.get("mode") == "stream"
    split = _val_split(run_dir, model, vocab, data, stream)
    probs, how = learned_bigram(model, split)
    if how == "direct":
        detail = "asked directly"
    else:
        detail = f"averaged over {len(split):,} val " + ("characters" if stream else "items")
    picture = BigramPicture(probs, symbol_labels(vocab), "probability", detail, "stream" if stream else "line")
    return _drop_boundary(picture) if stream else picture


def _val_split(run_dir: str | Path, model: Any, vocab: Vocab, data: dict[str, Any], stream: bool) -> Any:
    if model.context_size is not None and model.context_size <= 1:
        return None  # asked directly: no data needed
    if stream:
        from makemore.data.corpus import open_stream_corpus
        from makemore.data.stream import stream_splits

        where = str(Path(run_dir) / ckpt.RUN_FILE)
        return stream_splits(open_stream_corpus(data, vocab, where), data, model, where=where)["val"]
    items = ckpt.read_split_items(run_dir, "val")
    return LineSplit(items, vocab) if items else None


def _drop_boundary(picture: BigramPicture) -> BigramPicture:
    """Running text has no item boundary (only its start): the boundary's row and column would be empty."""
    picture.matrix = picture.matrix[1:, 1:]
    picture.labels = picture.labels[1:]
    return picture
