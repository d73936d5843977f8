"""Pictures of a labelled run: the confusion matrix of its classifier, and its label vectors among the character
embeddings (when they live in the same space: --label-mode add, and concat's label vectors of the same width)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from makemore.insight.figures import DPI, new_figure, style
from makemore.models.labels import LabelTable


def label_embedding_table(model: Any, width: int) -> torch.Tensor | None:
    """(n_labels, width) label vectors read alongside the character embeddings, or None when the model has none of
    that width (an n-gram, a bigram's logit offsets, the recurrent models' per-label initial states)."""
    table = getattr(model, "label_emb", None)
    if isinstance(table, LabelTable) and table.table.embedding_dim == width:
        return table.table.weight.detach().float().cpu()
    return None


def label_symbol(name: str) -> str:
    """How a label is written among the characters of `plot embeddings` (symbol_group reads it back)."""
    return f"[{name}]"


def plot_confusion(confusion: list[list[int]], labels: list[str], title: str, dpi: int = DPI) -> Any:
    """The confusion matrix as a heatmap: rows the true label, columns the predicted one; each cell its count and
    its share of the row (the per-label recall on the diagonal)."""
    counts = np.asarray(confusion, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.9 * len(labels)
    with style():
        fig = new_figure(size + 1.5, size, dpi)
        ax = fig.add_subplot()
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(len(labels)):
            for j in range(len(labels)):
                color = "white" if shares[i, j] > 0.6 else "black"
                ax.text(j, i, f"{int(counts[i, j])}\n{100 * shares[i, j]:.0f}%", ha="center", va="center", color=color)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's items")
    return fig
