"""What every decoder shares: the `Generated` item record and `prime`, which feeds the prefix once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from makemore.data.lines import BOUNDARY
from makemore.models import LanguageModel


@dataclass
class Generated:
    """One item: token ids (prefix included, no boundary) and its log-probabilities (nats, temperature 1)."""

    ids: list[int]
    logprob: float  # under the model conditioned per step on the constraints (the sampler's distribution at T=1)
    model_logprob: float  # under the model alone: prefix, characters and the end token
    token_logprobs: list[float]  # the model's log-prob of each character and of the end (len(ids) + 1 values)
    score: float | None = None  # beam search: the (length-normalised) score it was ranked by


def prime(
    model: LanguageModel, n: int, prefix: list[int], device: torch.device, expand: bool = True
) -> tuple[torch.Tensor, Any, list[float]]:
    """Feed the boundary and the prefix once (one row), then copy the state to n rows (unless not `expand`).

    Returns the next-token logits (n, V), the state, and the model's log-prob of each prefix character.
    """
    state = model.init_state(1)
    prefix_logprobs: list[float] = []
    logits = None
    for token in [BOUNDARY] + prefix:
        if logits is not None:
            prefix_logprobs.append(float(torch.log_softmax(logits.double(), dim=-1)[0, token]))
        logits, state = model.step(torch.full((1,), token, dtype=torch.long, device=device), state)
    assert logits is not None  # the boundary is always fed
    if n == 1 or not expand:
        return logits.expand(n, -1), state, prefix_logprobs
    rows = torch.zeros(n, dtype=torch.long, device=device)
    return logits.expand(n, -1), model.reorder_state(state, rows), prefix_logprobs
