"""A leaner `Transformer.step` for `makemore serve`'s sampling workers (installed there, on runs that are loaded once
and never trained in that process: it keeps the first step's result): the same tensor operations on the same tensors, in
the same order, so every logit is bit-identical (the tests compare them), with less Python around them.

A decoding step of the default transformer (3 layers, 128 wide) for 20 rows is ~60 small torch calls; the module
calls, the `KVCache` tuples and the `dataclasses.replace` copies around them cost nearly as much again. Measured on
the 2-core CPU, a worker's request of 20 items (nearest data items included): 17.5 -> 12.8 ms of CPU (medians of
alternating rounds; `benchmarks/serve_load.py --task-cpu`).

What changes, none of it in the arithmetic:

- the layers' functions are called directly, with the weights gathered once: `torch.addmm(bias, x, weight.t())` on
  (B, C) rows, which is what `F.linear` calls for the model's contiguous (B, 1, C) rows, `torch.layer_norm`, ...;
- the attention mask is made additive (0 / -inf) once per step, not converted from booleans in each layer (SDPA
  converts a boolean mask to exactly this tensor);
- the step writes into the state it is given and returns it (`Transformer.step`'s contract already says a state
  is consumed by the step given it);
- the first step of every item (the boundary token read into an empty one-row state: `prime`) is computed once
  and then copied.

Only for a `Transformer` in eval mode, while its window has not slid (t < block_size); anything else takes the
model's own `step`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from makemore.data.lines import BOUNDARY
from makemore.models.transformer import DecodeState, Transformer


class TransformerStep:
    """Called as `model.step(idx, state)`; `install` puts it on a model instance."""

    def __init__(self, model: Transformer):
        self.model = model
        config = model.config
        self.block_size, self.n_head = config.block_size, config.n_head
        self.width, self.head_size = config.n_embd, config.n_embd // config.n_head
        self.slow = Transformer.step.__get__(model)
        norm = lambda ln: (ln.weight, ln.bias, ln.eps)  # noqa: E731
        linear = lambda layer: (layer.bias, layer.weight.t())  # noqa: E731  (what F.linear hands to addmm)
        self.layers = [
            (
                norm(block.ln_1),
                linear(block.attn.c_attn),
                linear(block.attn.c_proj),
                norm(block.ln_2),
                linear(block.mlp[0]),
                linear(block.mlp[2]),
            )
            for block in model.blocks
        ]
        self.final_norm = norm(model.ln_f)
        self.head = linear(model.lm_head)
        like = model.wte.weight
        self.positions = torch.arange(self.block_size, device=like.device)
        self.zero = torch.zeros((), dtype=like.dtype, device=like.device)
        self.hidden = torch.full((), float("-inf"), dtype=like.dtype, device=like.device)
        self.first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # logits, keys, values of t = 0

    def usable(self) -> bool:
        """The layers are the ones this step knows (a subclass or an edited model takes its own step)."""
        model = self.model
        return (
            type(model) is Transformer
            and not model.n_labels
            and all(
                type(block.mlp[1]) is torch.nn.GELU and block.mlp[1].approximate == "none" for block in model.blocks
            )
        )

    def __call__(self, idx: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, DecodeState]:
        if state.t >= self.block_size or self.model.training or torch.is_grad_enabled():
            return self.slow(idx, state)
        if state.t == 0 and idx.size(0) == 1 and int(idx[0]) == BOUNDARY:  # the first step of every item
            if self.first is not None:
                logits, keys, values = self.first
                state.tokens[:, 0] = idx
                state.keys[0], state.values[0] = keys, values
                state.start, state.t = torch.zeros_like(state.start), 1
                return logits.clone(), state
            logits, state = self._step(idx, state)
            self.first = (logits.clone(), state.keys[0].clone(), state.values[0].clone())
            return logits, state
        return self._step(idx, state)

    def _step(self, idx: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, DecodeState]:
        """`Transformer.step` for t < block_size, writing into `state`."""
        t = state.t
        state.tokens[:, t] = idx
        start = torch.where(idx == BOUNDARY, t, state.start)  # (B,): where each row's item starts
        x = torch.embedding(self.model.wte.weight, idx) + torch.embedding(self.model.wpe.weight, t - start)  # (B, C)
        mask = torch.where(self.positions[: t + 1] >= start[:, None], self.zero, self.hidden)[:, None, None]
        logits = self._layers(x, mask, state, t)
        state.start, state.t = start, t + 1
        return logits, state

    def _layers(self, x: torch.Tensor, mask: torch.Tensor, state: DecodeState, t: int) -> torch.Tensor:
        """x (B, C) at position t -> logits (B, V), writing every layer's key and value at t.

        Rows are (B, C) where the model's are (B, 1, C): `F.linear` flattens a contiguous (B, 1, C) input to
        exactly this `addmm`, and layer norm, GELU and additions work row by row either way."""
        B, C, nh, hs = x.size(0), self.width, self.n_head, self.head_size
        norm, shape, cudnn = torch.layer_norm, (C,), torch.backends.cudnn.enabled  # (as F.layer_norm passes it)
        for i, (ln_1, attn_in, attn_out, ln_2, mlp_in, mlp_out) in enumerate(self.layers):
            q, k, v = _linear(norm(x, shape, *ln_1, cudnn), attn_in).view(B, 3, nh, hs).unbind(1)
            keys, values = state.keys[:, i], state.values[:, i]  # (block_size, B, nh, hs)
            keys[t] = k
            values[t] = v
            y = F.scaled_dot_product_attention(
                q[:, :, None], keys[: t + 1].permute(1, 2, 0, 3), values[: t + 1].permute(1, 2, 0, 3), mask
            )  # (B, nh, 1, hs)
            x = x + _linear(y.transpose(1, 2).reshape(B, C), attn_out)
            x = x + _linear(F.gelu(_linear(norm(x, shape, *ln_2, cudnn), mlp_in)), mlp_out)
        return _linear(norm(x, shape, *self.final_norm, cudnn), self.head)


def _linear(x: torch.Tensor, layer: tuple[torch.Tensor | None, torch.Tensor]) -> torch.Tensor:
    """F.linear(x, weight, bias) for a 2-D x, as it computes it: addmm(bias, x, weight.t()), or mm without bias."""
    bias, weight_t = layer
    return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)


def install(model: Any) -> bool:
    """Give `model` the lean step where it applies (a plain Transformer, no labels); True if it did. Its logits are
    the model's own, bit for bit (tests/test_serve_speed.py)."""
    if type(model) is not Transformer:
        return False
    step = TransformerStep(model)
    if not step.usable():
        return False
    model.__dict__["step"] = step  # an instance attribute: found before the class's method
    return True
