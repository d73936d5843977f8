"""Exact evaluation: the mean NLL over every predicted token of a split, however it is batched or sharded."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from makemore.data.lines import IGNORE
from makemore.models import LanguageModel
from makemore.training.devices import autocast


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    dtype: str = "fp32",
    reduce: Callable[[list[float]], list[float]] | None = None,
) -> dict[str, float]:
    """Exact mean NLL (nats per predicted token) over every batch given, plus bits/char and perplexity.

    `reduce` combines the (NLL sum, token count) of several processes that each evaluated a share of the batches
    (distributed.all_reduce_sum), so the mean is over the whole split.
    """
    device = device or model.device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Stream evaluation of recurrent models: consecutive batches continue the same streams, so the state carries.
    carry, state = getattr(batches, "carry_state", False), None
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            if carry:
                logits, _, state = model.forward_with_state(x, None, state)
            else:
                logits, _ = model(x)
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((y != IGNORE).sum())
    model.train(was_training)
    if reduce is not None:
        total, count = reduce([total, count])
        count = int(count)
    nll = total / max(count, 1)
    return {"nll": nll, "bpc": nll / math.log(2), "ppl": math.exp(min(nll, 700)), "tokens": count}
