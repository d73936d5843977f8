"""One generate() for every model: batched, incremental (model.step), finished rows leave the batch.

Decoding options act on the next-token logits (B, V) of each step; constraints are masks on those logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import BOUNDARY
from .models import LanguageModel


@dataclass
class DecodeOptions:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False


def filter_logits(logits: torch.Tensor, options: DecodeOptions) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on logits (B, V); removed entries become -inf."""
    logits = logits.float() / max(options.temperature, 1e-8)
    if options.top_k is not None and options.top_k < logits.size(-1):
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p is not None and options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, options: DecodeOptions, generator: torch.Generator | None) -> torch.Tensor:
    if options.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits, options), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: LanguageModel,
    n: int,
    max_len: int,
    options: DecodeOptions | None = None,
    prefix: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """n items as lists of token ids (the prefix included, boundary excluded); each at most max_len tokens.

    Rows that emit the boundary token are finished and leave the batch (reorder_state keeps the rest).
    """
    options = options or DecodeOptions()
    prefix = prefix or []
    model.eval()
    device = model.device
    state = model.init_state(n)
    outputs: list[list[int]] = [list(prefix) for _ in range(n)]
    # Feed the boundary and the prefix; the last call's logits give the first free token.
    feed = [BOUNDARY] + list(prefix)
    for token in feed:
        logits, state = model.step(torch.full((n,), token, dtype=torch.long, device=device), state)
    active = torch.arange(n, device=device)  # which output each batch row belongs to
    for _ in range(max_len - len(prefix)):
        next_ids = choose(logits, options, generator)  # (B,)
        ended = next_ids == BOUNDARY
        for row, token in zip(active.tolist(), next_ids.tolist()):
            if token != BOUNDARY:
                outputs[row].append(token)
        if ended.all():
            break
        if ended.any():
            keep = (~ended).nonzero(as_tuple=True)[0]
            active, next_ids = active[keep], next_ids[keep]
            state = model.reorder_state(state, keep)
        logits, state = model.step(next_ids, state)
    return outputs
