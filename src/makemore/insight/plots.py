"""Pictures of what a model learned, one module per kind, all in one style (see figures.py). This module gathers
their public names, so `from makemore.insight.plots import plot_loss` works whichever module a picture lives in.

Two layers: functions that compute what to draw from runs and data (NumPy/PyTorch only, tested without
matplotlib), and `plot_*` functions that draw it on a matplotlib `Figure`.
"""

from __future__ import annotations

from makemore.insight.activations import activation_layers, plot_activations
from makemore.insight.bigram import (
    BigramPicture,
    bigram_counts,
    bigram_figure_size,
    data_bigram,
    learned_bigram,
    plot_bigram,
    run_bigram,
    stream_bigram_counts,
)
from makemore.insight.embeddings import (
    embedding_table,
    embedding_view,
    pca_2d,
    plot_embeddings,
    run_embedding_table,
    symbol_group,
)
from makemore.insight.figures import DPI, STYLE, new_figure, save_figure, style, symbol_labels
from makemore.insight.loss import RunMetrics, moving_average, plot_loss, read_metrics, require_a_curve
from makemore.insight.sweeps import plot_attention, plot_lr_find

__all__ = [
    "DPI",
    "BigramPicture",
    "STYLE",
    "RunMetrics",
    "activation_layers",
    "bigram_counts",
    "bigram_figure_size",
    "data_bigram",
    "embedding_table",
    "embedding_view",
    "learned_bigram",
    "moving_average",
    "new_figure",
    "pca_2d",
    "plot_activations",
    "plot_attention",
    "plot_bigram",
    "plot_embeddings",
    "plot_loss",
    "plot_lr_find",
    "read_metrics",
    "require_a_curve",
    "run_bigram",
    "run_embedding_table",
    "save_figure",
    "stream_bigram_counts",
    "style",
    "symbol_group",
    "symbol_labels",
]
