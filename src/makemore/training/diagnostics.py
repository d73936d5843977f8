"""Training diagnostics: the lectures' tools for spotting dead, saturated or badly scaled layers, for any model.

Karpathy's "Building makemore part 3" (activations, gradients, BatchNorm) looks at three things while training:
  1. the distribution of every layer's activations, and for tanh the fraction of saturated units (|x| > 0.97);
  2. the distribution of the gradients flowing back into those activations;
  3. the update-to-data ratio of each weight matrix, std(update) / std(weight), which should sit near 1e-3.

`Observer` collects these with forward hooks (so no model needs special code) on the steps that the trainer logs,
and only then: on every other step the hooks return at once. Records go to RUN/diagnostics.jsonl, one per logged
step. What counts as an activation: the output of every leaf module (Linear, Embedding, norms, nn.Tanh, ...), and the
*input* of every Dropout module, which is where a functional `torch.tanh(h)` or `F.gelu(h)` becomes visible.
Positions whose target is padding are left out, so the statistics describe real tokens only.

`Observer` also writes TensorBoard event files (`--tensorboard`): scalars for every log line and, with
diagnostics on, histograms. TensorBoard is an optional extra; without it the trainer runs on and the CLI prints
`TENSORBOARD_HINT`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from makemore.runs import checkpoint as ckpt

DIAGNOSTICS_FILE = "diagnostics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_HINT = (
    "--tensorboard: TensorBoard is not installed (pip install 'makemore[tensorboard]'); training on without it"
)
HISTOGRAM_BINS = 50
SATURATED = 0.97  # |tanh| above this passes almost no gradient: 1 - 0.97**2 = 0.06
ACTIVATION_MODULES = (nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softsign, nn.Hardtanh)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


FIELDS = ("n", "mean", "std", "min", "max", "saturated", "dead_saturated", "dead_zero")


def summarize(values: torch.Tensor, keep: torch.Tensor | None = None, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Statistics of the kept, finite entries of a tensor, as one vector on its device (no host sync, so a capture
    costs one transfer however many layers it covers): the FIELDS, then `bins` equal-width counts from min to max.

    saturated: share of |x| > 0.97. dead_saturated / dead_zero: share of units (last dimension) that are saturated,
    or exactly 0, at every kept position: such a unit passes no gradient for the whole batch (the white columns of
    the lecture's `h.abs() > 0.99` image). `unpack` keeps the ones that make sense for the values' range.
    """
    x = values.detach().float()
    if x.dim() == 0:
        x = x.reshape(1)
    ok = torch.isfinite(x) if keep is None else torch.isfinite(x) & keep
    weight = ok.float()
    n = weight.sum()
    count = n.clamp(min=1)
    safe = torch.where(ok, x, torch.zeros((), device=x.device))
    mean = safe.sum() / count
    std = ((torch.where(ok, x - mean, torch.zeros((), device=x.device)) ** 2).sum() / count).sqrt()
    lo = torch.where(ok, x, torch.full((), math.inf, device=x.device)).min()
    hi = torch.where(ok, x, torch.full((), -math.inf, device=x.device)).max()
    width = (hi - lo).clamp(min=1e-12)
    index = ((safe - lo) / width * bins).floor().clamp(0, bins - 1).long().reshape(-1)
    counts = torch.zeros(bins, device=x.device).scatter_add_(0, index, weight.reshape(-1))
    saturated = ((x.abs() > SATURATED) & ok).float().sum() / count
    units_ok = ok.reshape(-1, x.shape[-1])  # (positions, units)
    units = x.reshape(-1, x.shape[-1])
    dead_saturated = ((units.abs() > SATURATED) | ~units_ok).all(dim=0).float().mean()
    dead_zero = ((units == 0) | ~units_ok).all(dim=0).float().mean()
    head = torch.stack([n, mean, std, lo, hi, saturated, dead_saturated, dead_zero])
    return torch.cat([head, counts])


def unpack(row: list[float], activation: bool = False) -> dict[str, Any]:
    """A `summarize` vector, read back on the host, as the JSON record of one tensor."""
    stats = dict(zip(FIELDS, row))
    n = int(stats["n"])
    if n == 0:
        out: dict[str, Any] = {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
        out["counts"] = []
    else:
        out = {"n": n, **{k: stats[k] for k in ("mean", "std", "min", "max")}}
        out["counts"] = [int(round(c)) for c in row[len(FIELDS) :]]
    if activation:
        tanh_like = n > 0 and stats["min"] >= -1.0 and stats["max"] <= 1.0 and stats["min"] < 0
        out["saturated"] = stats["saturated"] if tanh_like else None
        if tanh_like:
            out["dead"] = stats["dead_saturated"]
        else:
            out["dead"] = stats["dead_zero"] if n > 0 and stats["min"] >= 0 else None  # ReLU-like
    return out


def grad_norm_of(model: nn.Module) -> float:
    """Global L2 norm of the parameters' current gradients."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


class _ActivationProbe:
    """A forward hook on one module: on armed steps, records its activation and (in backward) its gradient."""

    def __init__(self, observer: Observer, name: str, module: nn.Module, use_input: bool):
        self.observer, self.name, self.use_input = observer, name, use_input
        self.kind = type(module).__name__
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        observer = self.observer
        if observer.current is None or not module.training:
            return
        value = inputs[0] if self.use_input else output
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
            return
        keep = None  # padding positions left out: the mask covers the leading (B, T) of the activation
        mask = observer.mask
        if mask is not None and value.dim() >= 3 and tuple(value.shape[:2]) == tuple(mask.shape):
            keep = mask.view(*mask.shape, *([1] * (value.dim() - 2))).expand_as(value)
        entry = {"name": self.name, "kind": self.kind + (" input" if self.use_input else "")}
        observer.current["activations"].append(entry)
        observer.pending.append((entry, None, summarize(value, keep)))
        if value.requires_grad:
            value.register_hook(lambda grad: observer.pending.append((entry, "grad", summarize(grad, keep))))


class Observer:
    """Diagnostics hooks and the TensorBoard writer of one training run; a no-op when both are off.

    The trainer calls `arm(will_log, targets)` before each step's forward pass and `on_log(record)` for each
    metrics line; the optimizer's step hooks measure gradients and updates of the armed step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        run_dir: str | Path,
        diagnostics: bool = False,
        tensorboard: bool = False,
        ignore_index: int = -1,
    ):
        self.model, self.run_dir, self.ignore_index = model, Path(run_dir), ignore_index
        self.enabled = diagnostics and optimizer is not None
        self.want_tensorboard = tensorboard and tensorboard_available()
        self.writer: Any = None
        self.start_step: int | None = None
        self.current: dict[str, Any] | None = None  # the record being filled during an armed step
        self.finished: dict[str, Any] | None = None  # the armed step's record, waiting for its log line
        self.mask: torch.Tensor | None = None
        self.before: dict[str, torch.Tensor] = {}
        self.pending: list[tuple[dict[str, Any], str | None, torch.Tensor]] = []  # (record entry, key, stats on device)
        self.probes: list[_ActivationProbe] = []
        self.handles: list[Any] = []
        if not self.enabled:
            return
        for name, module in model.named_modules():
            if next(module.children(), None) is not None:
                continue  # containers: their leaves are hooked
            if isinstance(module, nn.Dropout):
                self.probes.append(_ActivationProbe(self, name, module, use_input=True))
            elif isinstance(module, ACTIVATION_MODULES) or any(True for _ in module.parameters(recurse=False)):
                self.probes.append(_ActivationProbe(self, name, module, use_input=False))
        self.weights = {name: p for name, p in model.named_parameters() if p.requires_grad and p.dim() >= 2}
        self.handles.append(optimizer.register_step_pre_hook(self._before_step))
        self.handles.append(optimizer.register_step_post_hook(self._after_step))

    # ------------------------------------------------------------------------------------------------ diagnostics
    @property
    def armed(self) -> bool:
        return self.current is not None

    def arm(self, will_log: bool, targets: torch.Tensor | None = None) -> None:
        """Collect on this step when it is a logged one; `targets` (B, T) tells real positions from padding."""
        if not self.enabled or not will_log:
            return
        self.current = {"event": "diagnostics", "activations": [], "params": []}
        self.pending = []
        device = next(self.model.parameters()).device
        self.mask = None if targets is None else (targets != self.ignore_index).to(device)

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.current is None:
            return
        for name, p in self.weights.items():
            if p.grad is None:
                continue
            entry = {"name": name, "shape": list(p.shape)}
            self.current["params"].append(entry)
            self.pending.append((entry, None, summarize(p.grad)))
            self.pending.append((entry, "data_std", p.detach().float().std().reshape(1)))
            self.before[name] = p.detach().clone()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.current is None:
            return
        for entry in self.current["params"]:
            old = self.before.pop(entry["name"]).float()
            update = self.weights[entry["name"]].detach().float() - old
            self.pending.append((entry, "update_ratio", (update.std() / old.std()).reshape(1)))
        self.before.clear()
        # Everything measured on this step, read back in one transfer (each .item() would wait for the device).
        values = torch.cat([v.reshape(-1).to("cpu", torch.float64) for _, _, v in self.pending]).tolist()
        offset = 0
        for entry, key, vector in self.pending:
            row, offset = values[offset : offset + vector.numel()], offset + vector.numel()
            if key is None:
                entry.update(unpack(row, activation="kind" in entry))
            elif key == "grad":
                entry["grad"] = unpack(row)
            else:
                entry[key] = row[0] if math.isfinite(row[0]) else None
        self.pending = []
        for entry in self.current["params"]:
            ratio = entry["std"] / entry["data_std"] if entry.get("data_std") else None
            entry["grad_data_ratio"] = ratio if ratio is None or math.isfinite(ratio) else None
        # A module called several times in one forward (one Dropout shared by all layers, say) recorded one entry per
        # call: number them, in call order, so each keeps its own name.
        names = [entry["name"] for entry in self.current["activations"]]
        seen: dict[str, int] = {}
        for entry in self.current["activations"]:
            if names.count(entry["name"]) > 1:
                seen[entry["name"]] = seen.get(entry["name"], 0) + 1
                entry["name"] = f"{entry['name']}[{seen[entry['name']]}]"
        self.finished, self.current, self.mask = self.current, None, None

    # ------------------------------------------------------------------------------------------------- logging
    def start(self, step: int) -> None:
        """Training (re)starts at `step`: TensorBoard events from a previous run at or after it are purged."""
        self.start_step = step

    def on_log(self, record: dict[str, Any]) -> None:
        """Called for every metrics line: writes the finished diagnostics of a train line, and TensorBoard."""
        diagnostics = None
        if record.get("event") == "train" and self.finished is not None:
            diagnostics, self.finished = {**self.finished, "step": record["step"]}, None
            ckpt.append_line(self.run_dir / DIAGNOSTICS_FILE, diagnostics)
        if self.want_tensorboard:
            self._tensorboard(record, diagnostics)

    def _open_writer(self, step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops events from after its checkpoint, a fresh (--force) run drops them all
        return SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=step)

    def _tensorboard(self, record: dict[str, Any], diagnostics: dict[str, Any] | None) -> None:
        step = int(record.get("step", 0))
        if self.writer is None:
            self.writer = self._open_writer(step if self.start_step is None else self.start_step)
        writer = self.writer
        if record.get("event") == "train":
            writer.add_scalar("loss/train", record["train_loss"], step)
            for key in ("lr", "tokens_per_s", "grad_norm"):
                if record.get(key) is not None:
                    writer.add_scalar(f"train/{key}", record[key], step)
        elif record.get("event") == "eval":
            if not math.isnan(record["val_loss"]):
                writer.add_scalar("loss/val", record["val_loss"], step)
            writer.flush()
        if diagnostics is None:
            return
        for entry in diagnostics["activations"]:
            _add_histogram(writer, f"activations/{entry['name']}", entry, step)
            if entry.get("grad"):
                _add_histogram(writer, f"activation_grads/{entry['name']}", entry["grad"], step)
            if entry.get("saturated") is not None:
                writer.add_scalar(f"saturated/{entry['name']}", entry["saturated"], step)
        for entry in diagnostics["params"]:
            _add_histogram(writer, f"param_grads/{entry['name']}", entry, step)
            if entry.get("update_ratio"):
                writer.add_scalar(f"update_ratio_log10/{entry['name']}", math.log10(entry["update_ratio"]), step)

    def close(self) -> None:
        for handle in self.handles + [probe.handle for probe in self.probes]:
            handle.remove()
        self.handles, self.probes = [], []
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _add_histogram(writer: Any, tag: str, stats: dict[str, Any], step: int) -> None:
    if not stats.get("n"):
        return
    counts = stats["counts"]
    width = (stats["max"] - stats["min"]) / len(counts)
    limits = [stats["min"] + width * (i + 1) for i in range(len(counts))]
    n, mean, std = stats["n"], stats["mean"], stats["std"]
    writer.add_histogram_raw(
        tag,
        min=stats["min"],
        max=stats["max"],
        num=n,
        sum=n * mean,
        sum_squares=n * (std * std + mean * mean),
        bucket_limits=limits,
        bucket_counts=counts,
        global_step=step,
    )


def read_diagnostics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The diagnostics records of a run, one per logged step (a resumed run's repeated steps: the last wins)."""
    path = Path(run_dir) / DIAGNOSTICS_FILE
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill (or garbage): skip it
        if isinstance(record, dict) and record.get("event") == "diagnostics" and type(record.get("step")) is int:
            by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]
