"""The neural bigram (makemore lecture 1): a V x V table of logits, row = current character, trained by gradient
descent. An L2 penalty on the table pulls it towards uniform, the gradient-descent twin of add-k smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from makemore.config import check, field
from makemore.models.base import LanguageModel, sequence_nll


@dataclass
class BigramConfig:
    l2: float = field(0.01, "L2 penalty on the logit table (smoothing as regularisation)")

    def __post_init__(self):
        check(self.l2 >= 0, f"--l2 must be >= 0, got {self.l2}")


class Bigram(LanguageModel):
    def __init__(self, config: BigramConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        self.logits = nn.Parameter(torch.zeros(vocab_size, vocab_size))  # uniform at start: loss = ln V

    @property
    def context_size(self) -> int:
        return 1

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        # F.embedding, not self.logits[idx]: indexing's backward accumulates with atomics on a multi-threaded CPU, so
        # its gradient (and then the whole run) could differ between two runs of the same command.
        logits = F.embedding(idx, self.logits)  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    def penalty(self) -> torch.Tensor:
        return self.config.l2 * self.logits.pow(2).mean()
