"""AdamW over flat buffers: each parameter group's weights, gradients and moments are one tensor each.

At makemore's sizes a model is ~50 small tensors, and the optimizer step, gradient clipping and zeroing pay per
tensor: measured on the 2-core CI machine for the 4-layer, 64-wide Transformer, PyTorch's fused AdamW step took
~1.6 ms, clipping ~0.5 ms, of a ~21 ms training step. Here the parameters become views into one buffer per group
(and their gradients views into another, which backward accumulates into in place), so a step is one fused
kernel call per group, and clipping one norm over two tensors (`flat_params`).

The update is PyTorch's own fused AdamW kernel (`torch._fused_adamw_`), so the numbers are those of
`torch.optim.AdamW(fused=True)`; only a parameter that gets no gradient at all differs (PyTorch skips it, here it
has a zero gradient: its moments decay and weight decay applies). State dicts have the per-parameter layout of
`torch.optim.AdamW`, so checkpoints move between the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

FlatLayout = list[tuple[torch.nn.Parameter, list[torch.Tensor]]]  # (flat buffer, the parameters it holds in order)


def views(buffer: torch.Tensor, params: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, the consecutive slice of `buffer` shaped like it), in order."""
    offset = 0
    for p in params:
        yield p, buffer[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


class FlatAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW(fused=True)` whose parameters (given in groups of one dtype and device) are moved into
    flat buffers at construction: the model's parameters stay the same objects, their storage is now shared."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float]):
        super().__init__(groups, lr=lr, betas=betas, fused=True)
        self._step_supports_amp_scaling = False  # GradScaler unscales first, then steps (see Trainer.train_step)
        self.flat_params: list[torch.nn.Parameter] = []  # one per group: .data the weights, .grad the gradients
        self.moments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (exp_avg, exp_avg_sq, step)
        for group in self.param_groups:
            self._flatten(group["params"])

    def _flatten(self, params: list[torch.nn.Parameter]) -> None:
        first = params[0] if params else torch.empty(0)
        if any(p.dtype != first.dtype or p.device != first.device or p.is_sparse for p in params):
            raise ValueError("a flat parameter group needs dense tensors of one dtype and device")
        total = sum(p.numel() for p in params)
        flat = torch.nn.Parameter(torch.empty(total, dtype=first.dtype, device=first.device))
        flat.grad = torch.zeros_like(flat)
        exp_avg, exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
        step = torch.zeros((), dtype=torch.float32, device=first.device)  # as AdamW(fused=True) keeps it
        with torch.no_grad():
            for (p, weights), (_, grad), (_, m), (_, v) in zip(
                views(flat.data, params), views(flat.grad, params), views(exp_avg, params), views(exp_avg_sq, params)
            ):
                weights.copy_(p)
                p.data, p.grad = weights, grad
                self.state[p] = {"step": step, "exp_avg": m, "exp_avg_sq": v}
        self.flat_params.append(flat)
        self.moments.append((exp_avg, exp_avg_sq, step))

    def layout(self) -> FlatLayout:
        """(flat buffer, the parameters it holds in order) per group."""
        return [(flat, list(group["params"])) for flat, group in zip(self.flat_params, self.param_groups)]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, flat, (exp_avg, exp_avg_sq, step) in zip(self.param_groups, self.flat_params, self.moments):
            if flat.numel() == 0:
                continue
            beta1, beta2 = group["betas"]
            step += 1
            torch._fused_adamw_(
                [flat.data], [flat.grad], [exp_avg], [exp_avg_sq], [], [step],
                lr=float(group["lr"]), beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                eps=group["eps"], amsgrad=False, maximize=False,
            )  # fmt: skip
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradients (never None: backward must add into the views, not replace them)."""
        for group, flat in zip(self.param_groups, self.flat_params):
            flat.grad.zero_()
            for p, grad in views(flat.grad, group["params"]):  # a replaced .grad gets its view back
                if p.grad is None or p.grad.data_ptr() != grad.data_ptr():
                    p.grad = grad

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an AdamW state (per parameter, from either class) into the flat moments."""
        super().load_state_dict(state_dict)  # replaces self.state with copies
        for group, (exp_avg, exp_avg_sq, step) in zip(self.param_groups, self.moments):
            steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state.get(p, {})]
            # one count per group: AdamW's per-parameter counts agree unless some parameter lacked a gradient
            step.fill_(float(max(steps)) if steps else 0.0)
            params = group["params"]
            for (p, m), (_, v) in zip(views(exp_avg, params), views(exp_avg_sq, params)):
                loaded = self.state.get(p, {})
                with torch.no_grad():
                    for key, view in (("exp_avg", m), ("exp_avg_sq", v)):
                        view.copy_(loaded[key]) if key in loaded else view.zero_()
                self.state[p] = {"step": step, "exp_avg": m, "exp_avg_sq": v}
