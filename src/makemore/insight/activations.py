"""Training diagnostics (--diagnostics): activation, gradient and update statistics in six panels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from makemore.insight.figures import DPI, new_figure, style

MAX_LINES = 8  # per panel; more layers are thinned evenly


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


@dataclass
class _Panels:
    """What the six panels share: the records, the last one, and the layers and parameters shown."""

    records: list[dict[str, Any]]
    steps: list[int]
    last: dict[str, Any]
    chosen: list[str]  # activation layers with a histogram
    by_name: dict[str, dict[str, Any]]
    colors: dict[str, str]
    params: list[str]
    shown_params: list[str]
    by_param: dict[str, dict[str, Any]]
    param_colors: dict[str, str]

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> _Panels:
        last = records[-1]
        chosen = _thin(activation_layers(last))
        params = [p["name"] for p in last["params"]]
        shown_params = _thin(params)
        return cls(
            records=records,
            steps=[r["step"] for r in records],
            last=last,
            chosen=chosen,
            by_name={e["name"]: e for e in last["activations"]},
            colors={name: f"C{i % 10}" for i, name in enumerate(chosen)},
            params=params,
            shown_params=shown_params,
            by_param={p["name"]: p for p in last["params"]},
            param_colors={name: f"C{i % 10}" for i, name in enumerate(shown_params)},
        )


def plot_activations(records: list[dict[str, Any]], title: str, dpi: int = DPI) -> Any:
    """Six panels from --diagnostics records: activation and activation-gradient histograms (last step), tanh
    saturation and dead units over training, weight-gradient histograms (last step), update:data ratios and
    activation standard deviations over training."""
    panels = _Panels.of(records)
    with style():
        fig = new_figure(18, 11.5, dpi)
        axes = fig.subplots(2, 3)
        fig.suptitle(title)
        _activation_histograms(axes[0, 0], panels)
        _activation_gradients(axes[0, 1], panels)
        _saturation(axes[0, 2], panels)
        _weight_gradients(axes[1, 0], panels)
        _update_ratios(axes[1, 1], panels)
        _activation_stds(axes[1, 2], panels)
    return fig


def _activation_histograms(ax: Any, p: _Panels) -> None:
    for name in p.chosen:
        e = p.by_name[name]
        extra = f", saturated {100 * e['saturated']:.1f}%" if e.get("saturated") is not None else ""
        _density(ax, e, f"{_layer(e)}: mean {e['mean']:+.2f}, std {e['std']:.2f}{extra}", p.colors[name])
    ax.set_title(f"Activations at step {p.last['step']}")
    ax.set_xlabel("activation value")
    ax.set_ylabel("density")
    ax.legend(loc="upper center", fontsize=8)


def _activation_gradients(ax: Any, p: _Panels) -> None:
    for name in p.chosen:
        grad = p.by_name[name].get("grad")
        if grad and grad.get("n"):
            _density(ax, grad, f"{_layer(p.by_name[name])}: std {grad['std']:.2e}", p.colors[name])
    ax.set_title(f"Gradients of those activations at step {p.last['step']}")
    ax.set_xlabel("gradient value")
    ax.set_ylabel("density")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
    if ax.lines:
        ax.legend(loc="upper right", fontsize=8)


def _saturation(ax: Any, p: _Panels) -> None:
    tracked = [n for n in p.chosen if p.by_name[n].get("saturated") is not None or p.by_name[n].get("dead") is not None]
    for name in tracked:
        label = _layer(p.by_name[name])
        if p.by_name[name].get("saturated") is not None:
            sat = [100 * _entry(r, name, "saturated") for r in p.records]
            ax.plot(p.steps, sat, color=p.colors[name], linewidth=1.6, label=f"{label}: saturated")
        dead = [100 * _entry(r, name, "dead") for r in p.records]
        ax.plot(p.steps, dead, color=p.colors[name], linestyle="--", label=f"{label}: dead units")
    if tracked:
        ax.set_title("Saturation (|x| > 0.97) and dead units")
        ax.set_ylabel("% of values / % of units")
    else:  # no tanh- or ReLU-like layer (e.g. GELU): show how gradients flow into each layer instead
        for name in p.chosen:
            grads = [_grad_std(r, name) for r in p.records]
            ax.plot(p.steps, grads, color=p.colors[name], linewidth=1.6, label=_layer(p.by_name[name]))
        ax.set_yscale("log")
        ax.set_title("Gradient std of those activations")
        ax.set_ylabel("std (log scale)")
    ax.set_xlabel("step")
    if ax.lines:
        ax.legend(loc="best", fontsize=8)


def _weight_gradients(ax: Any, p: _Panels) -> None:
    for name in p.shown_params:
        param = p.by_param[name]
        ratio = param.get("grad_data_ratio")
        label = f"{name}: {ratio:.1e}" if ratio else name
        _density(ax, param, label, p.param_colors[name])
    ax.set_title(f"Weight gradients at step {p.last['step']}" + _of(p.shown_params, p.params))
    ax.text(0.02, 0.97, "legend: std(grad) / std(weight)", transform=ax.transAxes, va="top", fontsize=9)
    ax.set_xlabel("gradient value")
    ax.set_ylabel("density")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
    if ax.lines:
        _legend_below(ax)


def _update_ratios(ax: Any, p: _Panels) -> None:
    for name in p.shown_params:
        ratios = [_param(r, name, "update_ratio") for r in p.records]
        logs = [math.log10(v) if v and v > 0 else math.nan for v in ratios]
        ax.plot(p.steps, logs, color=p.param_colors[name], linewidth=1.6, label=name)
    ax.axhline(-3, color="black", linestyle=":", linewidth=1.2, label="1e-3 (rule of thumb)")
    ax.set_title("Update:data ratio" + _of(p.shown_params, p.params))
    ax.set_xlabel("step")
    ax.set_ylabel("log10 std(update) / std(weight)")
    _legend_below(ax)


def _activation_stds(ax: Any, p: _Panels) -> None:
    every = _thin([e["name"] for e in p.last["activations"]])
    for i, name in enumerate(every):
        stds = [_entry(r, name, "std") for r in p.records]
        ax.plot(p.steps, stds, color=f"C{i % 10}", linewidth=1.6, label=_layer(p.by_name[name]))
    stds = [v for line in ax.lines for v in line.get_ydata() if math.isfinite(v) and v > 0]
    wide = bool(stds) and max(stds) > 10 * min(stds)
    if wide:  # layers' scales differ by orders of magnitude (embeddings, logits, ...)
        ax.set_yscale("log")
    ax.set_title("Activation std per layer" + _of(every, list(p.by_name)))
    ax.set_xlabel("step")
    ax.set_ylabel("std (log scale)" if wide else "std")
    _legend_below(ax)


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
