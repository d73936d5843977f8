"""The hierarchical WaveNet of the makemore lectures: van den Oord et al. (2016), "WaveNet: A Generative Model for
Raw Audio", as adapted in "Building makemore Part 5": embeddings -> fuse pairs of neighbours -> fuse pairs of
pairs -> ... -> BatchNorm -> tanh at each level.

The lectures fuse the pairs of one fixed window per example. Here the fusion is a causal dilated convolution with
kernel 2 and dilations 1, 2, 4, ...: layer l computes h_l[t] = W_l [h_{l-1}[t - d_l]; h_{l-1}[t]] at every t, so
one forward pass predicts every position of an item, with a receptive field of 2 ** n_layer tokens.

Before an item's first token there are boundary tokens, as in the lectures' "....emma" windows. Every position
before the start holds the same activation at every layer (its whole receptive field is boundary), so instead of
padding the input with 2 ** n_layer - 1 tokens we carry one extra "before the start" column and use it wherever a
fusion would reach back past the item's start. Every boundary token starts a new item, so several items can share
a row (`packable`) and each is read exactly as if it were alone.

BatchNorm normalises over batch *and* time (the lectures applied it over the batch only once their tensors became
3-D, a bug they point out), with statistics from real positions only, so neither padding nor packing changes them.
Decoding keeps, per layer, a queue of the last d_l inputs of that layer: each new token costs one position per
layer, and a boundary token refills the queues with the "before the start" activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from makemore.config import check, field
from makemore.data.lines import BOUNDARY, IGNORE
from makemore.models.base import Dropout, LanguageModel, segment_starts, sequence_nll, small_output_layer
from makemore.models.labels import LabelTable, check_mode, take_item_labels


@dataclass
class WaveNetConfig:
    n_layer: int = field(4, "fusion levels; the receptive field is 2 ** n_layer characters")
    n_embd: int = field(32, "embedding size of a character")
    n_hidden: int = field(192, "channels of each fusion level")
    norm: str = field("batch", "normalisation before each tanh", choices=("batch", "layer", "none"))
    dropout: float = field(0.1, "dropout after each level")

    def __post_init__(self):
        check(1 <= self.n_layer <= 12, f"--n-layer must be in 1..12, got {self.n_layer}")
        # upper limits, so a typo or a crafted run.json fails here instead of exhausting memory
        check(1 <= self.n_embd <= 65536, f"--n-embd must be in 1..65536, got {self.n_embd}")
        check(1 <= self.n_hidden <= 65536, f"--n-hidden must be in 1..65536, got {self.n_hidden}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")


def batch_norm(norm: nn.BatchNorm1d, h: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm over batch *and* time: h (B, T, C) normalised with the statistics of the positions `real` (B, T)
    only (training), or with the running statistics (eval, or no mask). Unlike `base.masked_batch_norm`, every
    position is normalised, because the "before the start" column must stay a valid activation."""
    B, T, C = h.shape
    if not norm.training or real is None:
        return norm(h.reshape(B * T, C)).view(B, T, C)
    var, mean = torch.var_mean(h[real], dim=0, correction=0)  # (C,) each
    with torch.no_grad():  # running statistics exactly as nn.BatchNorm1d keeps them (unbiased running variance)
        n = int(real.sum())
        norm.running_mean.lerp_(mean, norm.momentum)
        norm.running_var.lerp_(var * n / max(n - 1, 1), norm.momentum)
        norm.num_batches_tracked.add_(1)
    return (h - mean) * (norm.weight * torch.rsqrt(var + norm.eps)) + norm.bias


class WaveNet(LanguageModel):
    packable = True  # boundaries reset the receptive field: packed items are independent

    def __init__(self, config: WaveNetConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        c = config
        self.wte = nn.Embedding(vocab_size, c.n_embd)
        widths = [c.n_embd] + [c.n_hidden] * c.n_layer
        # Each fusion reads two positions: Linear(2 * C_in, C_out) on [h[t - d]; h[t]], i.e. a kernel-2 convolution.
        self.fuse = nn.ModuleList(nn.Linear(2 * a, b, bias=c.norm == "none") for a, b in zip(widths, widths[1:]))
        if c.norm == "batch":
            self.norms = nn.ModuleList(nn.BatchNorm1d(c.n_hidden) for _ in range(c.n_layer))
        elif c.norm == "layer":
            self.norms = nn.ModuleList(nn.LayerNorm(c.n_hidden) for _ in range(c.n_layer))
        else:
            self.norms = None
        self.drop = Dropout(c.dropout)
        self.lm_head = small_output_layer(c.n_hidden, vocab_size)

    @property
    def context_size(self) -> int:
        return 2**self.config.n_layer

    def dilation(self, layer: int) -> int:
        return 2**layer

    def _level(self, layer: int, pair: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        """pair (B, T, 2 C_in) -> (B, T, n_hidden): fuse, normalise, tanh, dropout."""
        h = self.fuse[layer](pair)
        if self.norms is not None:
            norm = self.norms[layer]
            h = batch_norm(norm, h, real) if isinstance(norm, nn.BatchNorm1d) else norm(h)
        return self.drop(torch.tanh(h))

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        check_mode("wavenet", mode, ("add", "state"))
        self.label_emb = LabelTable(n_labels, self.config.n_embd)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        vectors = None
        if self.n_labels:  # each item's label vector at its every input (add) or at its start symbol (state)
            idx, labels, at_start = take_item_labels(idx, self.vocab_size)
            vectors = self.label_emb(labels)  # (B, T, n_embd)
            if self.label_mode == "state":
                vectors = vectors * at_start[..., None].to(vectors.dtype)
        idx = F.pad(idx, (1, 0), value=BOUNDARY)  # (B, 1 + T): column 0 is "before the start"
        starts = segment_starts(idx)  # (B, 1 + T): where each position's item starts
        t = torch.arange(T + 1, device=idx.device)
        real = F.pad(targets != IGNORE, (1, 0), value=False) if targets is not None else None  # (B, 1 + T)
        h = self.wte(idx)  # (B, 1 + T, n_embd)
        if vectors is not None:
            h = h + F.pad(vectors, (0, 0, 1, 0))  # column 0 ("before the start") has no label
        for layer in range(self.config.n_layer):
            d = self.dilation(layer)
            before_start = h[:, :1]  # (B, 1, C)
            shifted = torch.cat([before_start.expand(-1, min(d, T + 1), -1), h[:, : max(T + 1 - d, 0)]], dim=1)
            inside = (t - d >= starts)[..., None]  # (B, 1 + T, 1): does h[t - d] belong to t's item?
            before = torch.where(inside, shifted, before_start)  # h[t - d], or "before the start"
            h = self._level(layer, torch.cat([before, h], dim=-1), real)  # (B, 1 + T, n_hidden)
        logits = self.lm_head(h[:, 1:])  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    # ----- incremental decoding: per layer, a queue of its last d inputs (oldest first)
    def _before_start(self) -> list[torch.Tensor]:
        """The "before the start" input of every layer, (1, n_in) each."""
        h = self.wte(torch.full((1,), BOUNDARY, dtype=torch.long, device=self.device))  # (1, n_embd)
        inputs = []
        for layer in range(self.config.n_layer):
            inputs.append(h)
            h = self._level(layer, torch.cat([h, h], dim=-1)[:, None], None)[:, 0]
        return inputs

    def init_state(self, batch_size: int) -> dict[str, list[torch.Tensor]]:
        empty = [h[:, None, :].expand(batch_size, self.dilation(i), -1) for i, h in enumerate(self._before_start())]
        return {"queues": [q.contiguous() for q in empty], "empty": [q[:1] for q in empty]}

    def step(self, idx: torch.Tensor, state: dict[str, list[torch.Tensor]]):
        h = self.wte(idx)  # (B, n_embd)
        new_item = (idx == BOUNDARY)[:, None, None]  # a boundary starts afresh: nothing before it is seen
        queues = []
        for layer, (queue, empty) in enumerate(zip(state["queues"], state["empty"])):
            queue = torch.where(new_item, empty, queue)  # (B, d, C)
            queues.append(torch.cat([queue[:, 1:], h[:, None]], dim=1))  # drop the oldest, append h[t]
            h = self._level(layer, torch.cat([queue[:, 0], h], dim=-1)[:, None], None)[:, 0]  # queue[:, 0] = h[t - d]
        return self.lm_head(h), {"queues": queues, "empty": state["empty"]}

    def reorder_state(self, state: dict[str, list[torch.Tensor]], rows: torch.Tensor):
        return {"queues": [q.index_select(0, rows) for q in state["queues"]], "empty": state["empty"]}
