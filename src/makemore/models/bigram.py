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
from makemore.models.labels import check_mode, take_labels


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
        if self.n_labels:  # a label's own logit offsets, added at every position
            idx, labels = take_labels(idx, self.vocab_size)
            offsets = F.embedding(labels.clamp(min=0), self.label_logits) * (labels >= 0)[:, None]
            return self._finish(F.embedding(idx, self.logits) + offsets[:, None, :], targets)
        logits = F.embedding(idx, self.logits)  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    def _finish(self, logits: torch.Tensor, targets: torch.Tensor | None):
        return logits, sequence_nll(logits, targets) if targets is not None else None

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        check_mode("bigram", mode, ("add",))
        self.label_logits = nn.Parameter(torch.zeros(n_labels, self.vocab_size))

    def penalty(self) -> torch.Tensor:
        if self.n_labels:
            return self.config.l2 * (self.logits.pow(2).mean() + self.label_logits.pow(2).mean())
        return self.config.l2 * self.logits.pow(2).mean()
