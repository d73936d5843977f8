"""Loss curves: a run's logged train and val losses (metrics.jsonl) and the picture comparing runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from makemore.errors import MakemoreError
from makemore.insight.figures import DPI, new_figure, style
from makemore.runs import checkpoint as ckpt


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
    run_dir: str = ""


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
        run_dir=str(run_dir),
    )


def require_a_curve(runs: list[RunMetrics]) -> None:
    """A closed-form fit (an n-gram) logs one val loss and no training steps: alone, it has no curve to draw."""
    if any(len(run.train_loss) for run in runs):
        return
    if len(runs) == 1:
        run = runs[0]
        valid = run.val_loss[~np.isnan(run.val_loss)]
        val = f"; its val loss is {valid.min():.4f}" if len(valid) else ""
        raise MakemoreError(
            f"{run.run_dir}: no loss curve to plot: the run has no training steps (fitted in closed form){val}; "
            f"see makemore info {run.run_dir}"
        )
    raise MakemoreError("no loss curve to plot: none of these runs has training steps (all fitted in closed form)")


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
    """Train (optionally smoothed) and val loss of several runs against step or wall time, one colour per run. A
    run fitted in closed form shows as a dotted line at its val loss, beside runs that have curves."""
    require_a_curve(runs)
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
