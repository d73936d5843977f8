"""The one interface every model implements; the trainer, evaluator and sampler see nothing else.

    forward(idx (B, T), targets (B, T) | None) -> logits (B, T, V), mean NLL over non-padding targets | None
    penalty()                 -> extra training loss (e.g. an L2 term); never part of reported NLL
    init_state(batch_size)    -> empty decoding state
    step(idx (B,), state)     -> next-token logits (B, V), new state
    reorder_state(state, rows)-> state of the kept/reordered rows (finished samples leave, beams re-rank)
    fit(split)                -> closed-form fitting for count models (`trainable = False`)

The default decoding state is a context buffer of the last `context_size` tokens and `step` recomputes `forward`
on it. Models with a cheaper incremental form (KV cache, recurrent state) override the three state methods.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over targets that are not padding. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE)


def masked_batch_norm(norm: nn.BatchNorm1d, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm over batch *and* time, with statistics from real positions only (padding would skew them).

    h (B, T, C). In eval mode, or without targets to tell padding apart, all positions use the same path.
    """
    B, T, C = h.shape
    flat = h.reshape(B * T, C)
    if not norm.training or targets is None:
        return norm(flat).view(B, T, C)
    real = (targets.reshape(-1) != IGNORE).nonzero(as_tuple=True)[0]
    out = torch.zeros_like(flat)
    out = out.index_copy(0, real, norm(flat.index_select(0, real)))
    return out.view(B, T, C)


class LanguageModel(nn.Module):
    trainable: bool = True

    def __init__(self, config: Any, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size

    @property
    def context_size(self) -> int | None:
        """How many past tokens the next prediction can depend on (None: unbounded)."""
        return None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        raise NotImplementedError

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def fit(self, split: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient descent")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----- incremental decoding: the generic "recompute on the cropped context" fallback
    def init_state(self, batch_size: int) -> Any:
        return torch.empty(batch_size, 0, dtype=torch.long, device=self.device)

    def step(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        context = torch.cat([state, idx[:, None]], dim=1)  # (B, t + 1)
        if self.context_size is not None:  # keep >= 1 token: order-1 models ignore it
            context = context[:, -max(self.context_size, 1) :]
        logits, _ = self(context)
        return logits[:, -1, :], context

    def reorder_state(self, state: Any, rows: torch.Tensor) -> Any:
        return state.index_select(0, rows)

    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")
