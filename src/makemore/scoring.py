"""Score items under a model: total log-probability and the log-probability of each character (and of the end)."""

from __future__ import annotations

import torch

from .data import IGNORE, LineSplit, Vocab
from .models import LanguageModel


@torch.inference_mode()
def score_items(model: LanguageModel, vocab: Vocab, items: list[str], batch_size: int = 512) -> list[dict]:
    """For each item: {"item", "logprob" (nats), "nll_per_token", "char_logprobs": [[char, logprob], ...]}.

    The last entry of char_logprobs is the end of the item, written "<end>". Unknown characters raise
    MakemoreError naming them.
    """
    for item in items:
        vocab.check(item, "item")
    model.eval()
    split = LineSplit(items, vocab)
    results = []
    for start in range(0, len(items), batch_size):
        index = torch.arange(start, min(start + batch_size, len(items)))
        x, y = split.rows(index)
        logits, _ = model(x.to(model.device))
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        picked = logprobs.gather(-1, y.clamp(min=0).to(model.device)[..., None]).squeeze(-1).cpu()  # (B, T)
        for row, item in enumerate(items[start : start + len(index)]):
            n = int((y[row] != IGNORE).sum())
            values = picked[row, :n].tolist()
            chars = list(item) + ["<end>"]
            total = float(sum(values))
            results.append(
                {
                    "item": item,
                    "logprob": total,
                    "nll_per_token": -total / n,
                    "char_logprobs": [[c, v] for c, v in zip(chars, values)],
                }
            )
    return results
