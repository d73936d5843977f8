"""MLP language model: Bengio, Ducharme, Vincent & Jauvin (2003), "A Neural Probabilistic Language Model".

Embeddings of the previous `block_size` characters are concatenated and fed through tanh hidden layers. Every
position of every item is predicted in one forward pass (the contexts are sliding windows over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from makemore.config import check, field
from makemore.models.base import LanguageModel, masked_batch_norm, sequence_nll, small_output_layer
from makemore.models.labels import LabelTable, take_labels
from makemore.models.ngram import context_windows


@dataclass
class MLPConfig:
    block_size: int = field(5, "context: how many previous characters the model sees")
    n_embd: int = field(24, "embedding size of a character")
    n_hidden: int = field(320, "width of each hidden layer")
    n_layer: int = field(1, "number of hidden tanh layers")
    batch_norm: bool = field(False, "BatchNorm before each tanh (statistics over batch and time)")
    dropout: float = field(0.3, "dropout on the hidden layers")

    def __post_init__(self):
        check(self.block_size >= 1, f"--block-size must be >= 1, got {self.block_size}")
        check(self.n_embd >= 1, f"--n-embd must be >= 1, got {self.n_embd}")
        check(self.n_hidden >= 1, f"--n-hidden must be >= 1, got {self.n_hidden}")
        check(self.n_layer >= 1, f"--n-layer must be >= 1, got {self.n_layer}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        # upper limits, so a typo or a crafted run.json fails here instead of exhausting memory
        check(self.block_size <= 4096, f"--block-size must be <= 4096, got {self.block_size}")
        check(self.n_embd <= 65536, f"--n-embd must be <= 65536, got {self.n_embd}")
        check(self.n_hidden <= 65536, f"--n-hidden must be <= 65536, got {self.n_hidden}")
        check(self.n_layer <= 256, f"--n-layer must be <= 256, got {self.n_layer}")


class MLP(LanguageModel):
    def __init__(self, config: MLPConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        c = config
        self.wte = nn.Embedding(vocab_size, c.n_embd)
        widths = [c.block_size * c.n_embd] + [c.n_hidden] * c.n_layer
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=not c.batch_norm) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c.n_hidden) for _ in range(c.n_layer)) if c.batch_norm else None
        self.drop = nn.Dropout(c.dropout)
        self.lm_head = small_output_layer(c.n_hidden, vocab_size)

    @property
    def context_size(self) -> int:
        return self.config.block_size

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        c = self.config
        self.label_emb = LabelTable(n_labels, c.n_embd)
        if mode == "concat":  # the first hidden layer reads [context embeddings; label]
            self.hidden[0] = nn.Linear((c.block_size + 1) * c.n_embd, c.n_hidden, bias=not c.batch_norm)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        labels = None
        if self.n_labels:
            idx, labels = take_labels(idx, self.vocab_size)
        windows = context_windows(idx, self.config.block_size)  # (B, T, block_size)
        h = self.wte(windows)  # (B, T, block_size, n_embd)
        if labels is not None:
            vector = self.label_emb(labels)[:, None, None, :]  # (B, 1, 1, n_embd)
            if self.label_mode == "add":  # on every character of every context
                h = h + vector
            elif self.label_mode == "state":  # on the start symbol only: the contexts that reach back to it
                k = self.config.block_size  # slot j of position t's window holds position t - k + 1 + j
                t = torch.arange(T, device=idx.device)[:, None]
                at_start = (t - k + 1 + torch.arange(k, device=idx.device)) == 0  # (T, k)
                h = h + vector * at_start[..., None].to(h.dtype)
            else:
                h = torch.cat([h, vector.expand(B, T, 1, -1)], dim=2)
        h = h.view(B, T, -1)  # (B, T, block_size * n_embd)
        for i, layer in enumerate(self.hidden):
            h = layer(h)  # (B, T, n_hidden)
            if self.norms is not None:
                h = masked_batch_norm(self.norms[i], h, targets)
            h = self.drop(torch.tanh(h))
        logits = self.lm_head(h)  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss
