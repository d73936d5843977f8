"""Recurrent language models on PyTorch's fused recurrent layers (one C++/cuDNN call per sequence, no Python loop):

- rnn:  Elman (1990), "Finding Structure in Time"; optionally with the identity-initialised hidden-to-hidden
        matrix of Le, Jaitly & Hinton (2015), "A Simple Way to Initialize Recurrent Networks of Rectified Linear Units"
- gru:  Cho et al. (2014), "Learning Phrase Representations using RNN Encoder-Decoder ..."
- lstm: Hochreiter & Schmidhuber (1997), "Long Short-Term Memory"

Stacked layers with dropout between them (Zaremba, Sutskever & Vinyals 2014), a learned initial state, and a
linear read-out at every position. Right padding needs no packing: the recurrence is causal, so padding after an
item's end never reaches its real positions. Decoding carries the hidden state, one token per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from makemore.config import check, field
from makemore.models.base import Dropout, LanguageModel, sequence_nll
from makemore.models.labels import LabelTable, take_labels

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h (n_layer, B, H); the LSTM also carries its cell c


@dataclass
class RecurrentConfig:
    n_embd: int = field(64, "embedding size of a character")
    n_hidden: int = field(256, "hidden state size of each layer")
    n_layer: int = field(2, "number of stacked recurrent layers")
    dropout: float = field(0.25, "dropout on the embeddings, between layers and before the output layer")
    weight_drop: float = field(
        0.0, "DropConnect on the hidden-to-hidden weights while training, one mask per batch (AWD-LSTM)"
    )

    def __post_init__(self):
        check(0 <= self.weight_drop < 1, f"--weight-drop must be in [0, 1), got {self.weight_drop}")
        check(self.n_embd >= 1, f"--n-embd must be >= 1, got {self.n_embd}")
        check(self.n_hidden >= 1, f"--n-hidden must be >= 1, got {self.n_hidden}")
        check(self.n_layer >= 1, f"--n-layer must be >= 1, got {self.n_layer}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        # upper limits, so a typo or a crafted run.json fails here instead of exhausting memory
        check(self.n_embd <= 65536, f"--n-embd must be <= 65536, got {self.n_embd}")
        check(self.n_hidden <= 65536, f"--n-hidden must be <= 65536, got {self.n_hidden}")
        check(self.n_layer <= 256, f"--n-layer must be <= 256, got {self.n_layer}")


@dataclass
class RNNConfig(RecurrentConfig):
    dropout: float = field(0.1, "dropout on the embeddings, between layers and before the output layer")
    nonlinearity: str = field("tanh", "activation of the Elman RNN", choices=("tanh", "relu"))
    identity_init: bool = field(False, "hidden-to-hidden matrix starts as the identity (Le et al. 2015, 'IRNN')")


@dataclass
class GRUConfig(RecurrentConfig):
    # measured on names, 10 min: dropout 0.25 with weight decay 0.01 stalled at val 1.935; 0.3 with 0.1 reached 1.920
    dropout: float = field(0.3, "dropout on the embeddings, between layers and before the output layer")


@dataclass
class LSTMConfig(RecurrentConfig):
    # the GRU's regularisation: on names, 7 min on one core (seed 1337), dropout 0.25 with weight decay 0.01 peaked
    # at step 7,500 of 8,847 (val 1.9214, then overfitting); 0.3 with 0.1 reached 1.9079 (benchmarks/results/auto.md)
    dropout: float = field(0.3, "dropout on the embeddings, between layers and before the output layer")


class Recurrent(LanguageModel):
    """Embedding -> stacked fused recurrent layers -> linear read-out. Subclasses pick the cell."""

    cell: type[nn.RNNBase]

    def __init__(self, config: RecurrentConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        c = config
        self.wte = nn.Embedding(vocab_size, c.n_embd)
        self.drop = Dropout(c.dropout)
        self.rnn = self.make_rnn(c)
        # The learned initial state: what the model "knows" before the first character (zeros at the start).
        self.h0 = nn.Parameter(torch.zeros(c.n_layer, 1, c.n_hidden))
        self.c0 = nn.Parameter(torch.zeros(c.n_layer, 1, c.n_hidden)) if self.cell is nn.LSTM else None
        self.lm_head = nn.Linear(c.n_hidden, vocab_size)
        with torch.no_grad():  # small output layer: the initial loss is close to ln V
            self.lm_head.weight.mul_(0.1)
            self.lm_head.bias.zero_()

    def make_rnn(self, c: RecurrentConfig) -> nn.RNNBase:
        dropout = c.dropout if c.n_layer > 1 else 0.0  # nn.RNN applies it between layers only
        return self.cell(c.n_embd, c.n_hidden, num_layers=c.n_layer, dropout=dropout, batch_first=True)

    @property
    def context_size(self) -> None:
        return None  # the state summarises the whole prefix

    def init_state(self, batch_size: int) -> State:
        h = self.h0.expand(-1, batch_size, -1).contiguous()  # (n_layer, B, H)
        return h if self.c0 is None else (h, self.c0.expand(-1, batch_size, -1).contiguous())

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        c = self.config
        if mode == "state":  # one learned initial state per label (and cell, for the LSTM), on top of h0
            self.label_h0 = LabelTable(n_labels, c.n_layer * c.n_hidden, std=0.1)
            self.label_c0 = LabelTable(n_labels, c.n_layer * c.n_hidden, std=0.1) if self.c0 is not None else None
            return
        self.label_emb = LabelTable(n_labels, c.n_embd)
        if mode == "concat":  # the first layer reads [character; label]
            dropout = c.dropout if c.n_layer > 1 else 0.0
            self.rnn = self.cell(2 * c.n_embd, c.n_hidden, num_layers=c.n_layer, dropout=dropout, batch_first=True)

    def _labelled_start(self, idx: torch.Tensor) -> tuple[torch.Tensor, State]:
        """A labelled model's input embeddings (B, T, C) and initial state (see models/labels.py)."""
        idx, labels = take_labels(idx, self.vocab_size)
        x, state = self.wte(idx), self.init_state(idx.size(0))
        if self.label_mode == "state":
            if self.c0 is None:
                return x, self._label_start(self.label_h0, labels, state)
            h, c = state
            return x, (self._label_start(self.label_h0, labels, h), self._label_start(self.label_c0, labels, c))
        vector = self.label_emb(labels)[:, None, :].expand_as(x)  # (B, T, C)
        return (x + vector if self.label_mode == "add" else torch.cat([x, vector], dim=-1)), state

    @staticmethod
    def _label_start(table: LabelTable, labels: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """s (n_layer, B, H) plus each row's label vector, read as (n_layer, H)."""
        return s + table(labels).view(len(labels), *s.shape[::2]).transpose(0, 1)

    def _run(self, idx: torch.Tensor, state: State, x: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x = self.drop(self.wte(idx) if x is None else x)  # (B, T, n_embd)
        if self.training and self.config.weight_drop > 0:
            out, state = self._run_weight_dropped(x, state)
        else:
            out, state = self.rnn(x, state)  # (B, T, H)
        return self.lm_head(self.drop(out)), state  # (B, T, V)

    def _run_weight_dropped(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The fused layers with dropped-out recurrent weights (Wan et al. 2013 DropConnect, as in Merity et al. 2017
        "Regularizing and Optimizing LSTM Language Models"): one mask for the whole batch, so every time step of a
        sequence sees the same recurrence, and the cell stays the fused one."""
        p = self.config.weight_drop
        weights = {
            name: F.dropout(w, p, training=True) if name.startswith("weight_hh") else w
            for name, w in self.rnn.named_parameters()
        }
        return functional_call(self.rnn, weights, (x, state))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if self.n_labels:
            x, state = self._labelled_start(idx)
            logits, _ = self._run(idx, state, x)
        else:
            logits, _ = self._run(idx, self.init_state(idx.size(0)))
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    def forward_with_state(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: State | None = None):
        """Stream mode: continue from the state after the previous window (None: the learned initial state)."""
        logits, state = self._run(idx, self.init_state(idx.size(0)) if state is None else state)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss, state

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logits, state = self._run(idx[:, None], state)
        return logits[:, -1], state

    def reorder_state(self, state: State, rows: torch.Tensor) -> State:
        if isinstance(state, tuple):
            return tuple(s.index_select(1, rows) for s in state)
        return state.index_select(1, rows)


class RNN(Recurrent):
    cell = nn.RNN

    def make_rnn(self, c: RNNConfig) -> nn.RNNBase:
        dropout = c.dropout if c.n_layer > 1 else 0.0
        rnn = nn.RNN(
            c.n_embd, c.n_hidden, num_layers=c.n_layer, nonlinearity=c.nonlinearity, dropout=dropout, batch_first=True
        )
        if c.identity_init:  # IRNN: W_hh = I, b = 0; the state is copied forward until learning says otherwise
            with torch.no_grad():
                for name, p in rnn.named_parameters():
                    if name.startswith("weight_hh"):
                        p.copy_(torch.eye(c.n_hidden))
                    elif name.startswith("bias"):
                        p.zero_()
        return rnn


class GRU(Recurrent):
    cell = nn.GRU


class LSTM(Recurrent):
    cell = nn.LSTM
