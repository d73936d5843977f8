"""The learning-rate sweep's curve and attention maps: pictures of one result each."""

from __future__ import annotations

from typing import Any

import numpy as np

from makemore.insight.figures import DPI, format_lr, new_figure, style


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
            lrs[lowest], smoothed[lowest], "v", color="C3", markersize=9, label=f"minimum at {format_lr(lrs[lowest])}"
        )
        ax.axvline(result.suggestion, color="C2", linestyle="--", linewidth=1.5)
        ax.plot(
            result.suggestion,
            smoothed[result.suggestion_index],
            "o",
            color="C2",
            markersize=9,
            label=f"suggested lr {format_lr(result.suggestion)} (half the minimum's lr)",
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
        ax.set_title(f"{title}\n{len(lrs)} steps, {format_lr(result.min_lr)} to {format_lr(lrs[-1])} ({ending})")
        ax.legend(loc="upper left")
    return fig


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
