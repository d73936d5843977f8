"""The Inspect view's pictures: the same figures `makemore plot` draws (insight.plots), as PNG bytes.

This is the small piece of glue the CLI keeps in cli/plot.py (pick the data, title the figure); the figures
themselves come from the library.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from makemore.api import Run
from makemore.data.lines import BOUNDARY
from makemore.errors import MakemoreError
from makemore.models import LanguageModel
from makemore.serve.runs import NotFound

KINDS = ("loss", "bigram", "embeddings", "attention")
DPI = 80  # a page shows them at about 800 px wide: smaller files, same pictures


def has_attention(run: Run) -> bool:
    return type(run.model).attention_maps is not LanguageModel.attention_maps


def plot_png(run: Run, name: str, kind: str, text: str = "emma") -> bytes:
    """One picture of `run` (called `name` in titles) as PNG bytes; a MakemoreError says why there is none."""
    from makemore.insight import plots

    if kind == "loss":
        figure = plots.plot_loss([plots.read_metrics(run.path, name)], "time", 1, DPI)
    elif kind == "bigram":
        picture = plots.run_bigram(run.path, run.model, run.vocab, run.spec.data)
        title = f"Learned P(next | current): {name} ({run.model_name}, {picture.detail})"
        figure = plots.plot_bigram(picture.matrix, picture.labels, title, picture.kind, DPI)
    elif kind == "embeddings":
        table = plots.run_embedding_table(run.spec, run.model).numpy()  # (V, C)
        coords, axis_labels = plots.embedding_view(table)
        title = f"Character embeddings: {name} ({run.model_name})"
        figure = plots.plot_embeddings(coords, plots.symbol_labels(run.vocab), axis_labels, title, DPI)
    elif kind == "attention":
        figure = attention_figure(run, name, text)
    else:
        raise NotFound(f"unknown plot {kind[:40]!r}; choose from {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory() as work:  # save_figure's palette PNG, read back
        path = plots.save_figure(figure, Path(work) / f"{kind}.png", "png")
        return path.read_bytes()


def attention_figure(run: Run, name: str, text: str) -> Any:
    from makemore.insight import plots

    if not has_attention(run):
        raise MakemoreError(
            f"the {run.model_name} model has no attention maps (only attention models, e.g. transformer)"
        )
    if not text:
        raise MakemoreError("text must not be empty")
    run.vocab.check(text, "text")
    idx = torch.tensor([[BOUNDARY] + run.vocab.encode(text)])  # (1, T): what the model reads for "emma."
    limit = run.model.context_size
    if limit is not None and idx.size(1) > limit:
        raise MakemoreError(f"text is {len(text)} characters; this model reads at most {limit - 1} at once")
    with torch.no_grad():
        maps = run.model.attention_maps(idx)
    labels = plots.symbol_labels(run.vocab)
    tokens = [labels[i] for i in idx[0].tolist()]
    layers = [m[0].float().cpu().numpy() for m in maps]  # each (n_head, T, T)
    return plots.plot_attention(layers, tokens, f'Attention maps: {name} ({run.model_name}) reading "{text}"', DPI)
