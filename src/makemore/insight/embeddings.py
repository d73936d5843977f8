"""Character embeddings: any model's embedding table, its 2-D view (raw or PCA) and the labelled scatter."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from makemore.data.lines import BOUNDARY
from makemore.errors import MakemoreError
from makemore.insight.figures import DPI, new_figure, style
from makemore.models.mix import Mix

VOWELS = set("aeiouy")


MIX_REFUSAL = (
    "a mix run has no character embeddings of its own (each member run has its own table, or none): "
    "give one of its member runs instead"
)


def run_embedding_table(spec: Any, model: nn.Module) -> torch.Tensor:
    """`embedding_table` of a loaded run (its RunSpec and model); a mix's refusal names its member runs."""
    if spec.model_name == "mix":
        mix = spec.data.get("mix") if isinstance(spec.data.get("mix"), dict) else {}
        members = [str(m) for m in mix.get("members", [])]
        raise MakemoreError(MIX_REFUSAL + (f": {', '.join(members)}" if members else ""))
    return embedding_table(model)


def embedding_table(model: nn.Module) -> torch.Tensor:
    """The (V, C) character embedding table of any model: its `wte` attribute when that is an nn.Embedding (the
    usual name), else its only nn.Embedding with one row per vocabulary symbol. A mix is refused: the tables found
    inside it would be one member's, and a picture of one member is not a picture of the mix."""
    if isinstance(model, Mix):
        raise MakemoreError(MIX_REFUSAL)
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
    if len(label) > 2 and label.startswith("[") and label.endswith("]"):  # a labelled run's label (insight/labels)
        return "label"
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
    palette["label"] = "C5"
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
