"""Count-based n-gram models (Shannon 1948; add-k smoothing as in Jurafsky & Martin, ch. 3).

Fitted in closed form, in one pass over the data: no gradient descent. Counts are stored sparsely as sorted integer
keys (the n-gram written in base V) with their counts, so high orders cost memory only for n-grams that occur.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check, field
from ..data import IGNORE
from .base import LanguageModel, sequence_nll


@dataclass
class NGramConfig:
    order: int = field(3, "n: predict each character from the previous n-1 (2 = the bigram table)")
    smoothing: str = field("add-k", "how unseen n-grams get probability", choices=("add-k",))
    k: float = field(0.1, "add-k smoothing: pseudo-count added to every n-gram (> 0)")

    def __post_init__(self):
        check(1 <= self.order <= 16, f"order must be in 1..16, got {self.order}")
        check(self.k > 0, f"k must be > 0 so unseen characters keep a non-zero probability, got {self.k}")


def context_windows(idx: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T) -> (B, T, length): the `length` tokens ending at each position, boundary-padded on the left."""
    B, T = idx.shape
    if length == 0:
        return idx.new_zeros(B, T, 0)
    padded = torch.cat([idx.new_zeros(B, length - 1), idx], dim=1)
    return padded.unfold(1, length, 1)


def encode_keys(windows: torch.Tensor, base: int) -> torch.Tensor:
    """(..., n) token windows -> (...) integer keys, the window read as a base-`base` number."""
    keys = torch.zeros(windows.shape[:-1], dtype=torch.long, device=windows.device)
    for j in range(windows.size(-1)):
        keys = keys * base + windows[..., j]
    return keys


def lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """values[keys == query] for each query, 0 where the key is absent. keys sorted ascending."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=values.dtype, device=query.device)
    pos = torch.searchsorted(keys, query.reshape(-1)).clamp(max=keys.numel() - 1)
    found = keys[pos] == query.reshape(-1)
    return torch.where(found, values[pos], torch.zeros((), dtype=values.dtype)).view(query.shape)


class NGram(LanguageModel):
    trainable = False

    def __init__(self, config: NGramConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        if vocab_size**config.order >= 2**62:
            raise ValueError(f"order {config.order} with {vocab_size} symbols overflows 64-bit n-gram keys")
        self.register_buffer("keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.float32))

    @property
    def context_size(self) -> int:
        return self.config.order - 1

    def fit(self, split) -> None:
        n = self.config.order
        windows = context_windows(split.inputs, n - 1)  # (N, L, n-1)
        real = split.targets != IGNORE
        grams = torch.cat([windows[real], split.targets[real][:, None]], dim=1)  # (tokens, n)
        keys, counts = torch.unique(encode_keys(grams, self.vocab_size), return_counts=True)
        self.keys = keys
        self.counts = counts.float()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        V, k = self.vocab_size, self.config.k
        context = encode_keys(context_windows(idx, self.config.order - 1), V)  # (B, T)
        candidates = context[..., None] * V + torch.arange(V, device=idx.device)  # (B, T, V)
        counts = lookup(self.keys, self.counts, candidates)  # (B, T, V)
        probs = (counts + k) / (counts.sum(-1, keepdim=True) + k * V)
        logits = probs.log()
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The tables' sizes depend on the data they were fitted on: take the saved tensors' shapes.
        for name in ("keys", "counts"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
