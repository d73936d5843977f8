"""Score items under a model: total log-probability and the log-probability of each character (and of the end).

Items are scored in batches of similar length (sorted, so padding costs little), with one `forward` per batch;
results come back in the input order.
"""

from __future__ import annotations

import math

import torch

from makemore.data.lines import IGNORE, LineSplit, Vocab
from makemore.models import LanguageModel


@torch.inference_mode()
def score_items(model: LanguageModel, vocab: Vocab, items: list[str], batch_size: int = 512) -> list[dict]:
    """For each item: {"item", "logprob" (nats), "nll_per_token", "char_logprobs": [[char, logprob], ...]}.

    The last entry of char_logprobs is the end of the item, written "<end>"; nll_per_token = -logprob / (characters
    + 1). Unknown characters raise MakemoreError naming them.
    """
    for item in items:
        vocab.check(item, "item")
    model.eval()
    split = LineSplit(items, vocab)
    order = torch.argsort(split.lengths, stable=True)
    results: list[dict | None] = [None] * len(items)
    for start in range(0, len(items), batch_size):
        index = order[start : start + batch_size]
        x, y = split.rows(index)  # (B, T) inputs and targets, trimmed to this batch's longest item
        logits, _ = model(x.to(model.device))
        logprobs = torch.log_softmax(logits.double(), dim=-1)  # (B, T, V)
        picked = logprobs.gather(-1, y.clamp(min=0).to(model.device)[..., None]).squeeze(-1).cpu()  # (B, T)
        for row, position in enumerate(index.tolist()):
            item = items[position]
            n = int((y[row] != IGNORE).sum())
            values = picked[row, :n].tolist()
            total = math.fsum(values)
            results[position] = {
                "item": item,
                "logprob": total,
                "nll_per_token": -total / n,
                "char_logprobs": [[c, v] for c, v in zip(list(item) + ["<end>"], values)],
            }
    return results  # type: ignore[return-value]
