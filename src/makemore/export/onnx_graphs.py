"""The torch modules that each family's ONNX graphs are exported from (onnx_export.py exports and checks them).

Per family, a step function (token ids (B,) + state -> logits (B, V) + new state) and a scorer (ids (B, T), rows
starting with the boundary -> logits (B, T, V)), small modules over the package's own layers, written so that the
batch and time dimensions stay symbolic: the recurrent state's batch is its second axis, the Transformer's step
state is its rolling window of the last block_size - 1 tokens (left-padded with the boundary; the same logits as the
KV cache, and the sliding window past block_size needs no branch), and "where each item starts" is a masked max
rather than cummax, which ONNX lacks. The recurrent families are built as ONNX graphs directly (onnx_recurrent.py),
a mix from its members' graphs (onnx_mix.py).

A labelled model's graphs take the label (B,) as their second input and read it as the model does (models/labels.py):
its vector added to every input (add), beside it (concat), or at the item's start (state: the start token, found as
the last boundary of a window, or the recurrent start state, which `initial_state` then depends on). Each row is
one item under one label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from makemore.data.lines import BOUNDARY
from makemore.export.families import model_name
from makemore.models import LanguageModel
from makemore.models.transformer import visible_keys


def starts_of(idx: torch.Tensor) -> torch.Tensor:
    """segment_starts without cummax: (B, T) -> index of the latest boundary at or before each position."""
    t = torch.arange(idx.size(1), device=idx.device)
    marks = torch.where(idx == BOUNDARY, t, torch.zeros_like(t))  # (B, T)
    seen = t[None, :] <= t[:, None]  # (T, T): key j at or before query i
    return torch.where(seen[None], marks[:, None, :], torch.zeros_like(marks)[:, None, :]).amax(-1)


def with_label_token(idx: torch.Tensor, label: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """Rows that start with the boundary as the package reads a labelled item: their first token the label's."""
    return idx if label is None else torch.cat([vocab_size + label[:, None], idx[:, 1:]], dim=1)


class Graphs(nn.Module):
    """One family's step and score functions over a package model. State tensors have the batch on `batch_axis`;
    `label` is None for an unlabelled model."""

    batch_axis = 0

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.model = model
        self.labelled = bool(model.n_labels)

    def initial_state(self, batch: int, label: torch.Tensor | None = None) -> list[torch.Tensor]:
        return []

    def step(self, ids: torch.Tensor, label: torch.Tensor | None, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def score(self, idx: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        return self.model(with_label_token(idx, label, self.model.vocab_size))[0]

    def label_vectors(self, label: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | float:
        """The label vector of each input, as the embeddings of `tokens` (B,) or (B, T): at every input (add), or at
        the boundary that starts the item (state); 0 without a label."""
        if label is None:
            return 0.0
        vector = self.model.label_emb(label)  # (B, C)
        vector = vector[:, None] if tokens.dim() == 2 else vector
        at = tokens == BOUNDARY if self.model.label_mode == "state" else torch.ones_like(tokens, dtype=torch.bool)
        return vector * at[..., None].to(vector.dtype)


class Stateless(Graphs):  # bigram
    def step(self, ids, label, *state):
        m = self.model
        logits = F.embedding(ids, m.logits)
        return (logits if label is None else logits + F.embedding(label, m.label_logits),)


class Context(Graphs):  # mlp: the state is the rolling context
    def initial_state(self, batch, label=None):
        return [torch.zeros(batch, self.model.context_size, dtype=torch.long)]

    def step(self, ids, label, context):
        m = self.model
        context = torch.cat([context[:, 1:], ids[:, None]], dim=1)
        h = m.wte(context)  # (B, block_size, C)
        if label is not None and m.label_mode == "concat":
            h = torch.cat([h, m.label_emb(label)[:, None]], dim=1)
        elif label is not None:  # state: the item's start is the context's last boundary (those before it: padding)
            slots = torch.arange(context.size(1))
            last = torch.where(context == BOUNDARY, slots, torch.full_like(context, -1)).amax(1, keepdim=True)
            h = h + self.label_vectors(label, torch.where(slots == last, BOUNDARY, 1))
        h = h.flatten(1)
        for i, layer in enumerate(m.hidden):
            h = layer(h)
            if m.norms is not None:
                h = m.norms[i](h)
            h = torch.tanh(h)
        return m.lm_head(h), context


class Recurrent(Graphs):  # the graphs: onnx_recurrent.py
    batch_axis = 1

    def initial_state(self, batch, label=None):
        m = self.model
        state = m.init_state(batch)
        parts = list(state) if isinstance(state, tuple) else [state]
        if label is not None and m.label_mode == "state":  # a learned start per label
            parts = [m._label_start(table, label, s) for table, s in zip([m.label_h0, m.label_c0], parts)]
        return [s.detach() for s in parts]


class WaveNet(Graphs):
    def initial_state(self, batch, label=None):
        return [q.detach() for q in self.model.init_state(batch)["queues"]]

    def step(self, ids, label, *queues):
        m = self.model  # WaveNet.step, with the label vectors
        h = m.wte(ids) + self.label_vectors(label, ids)
        new_item = (ids == BOUNDARY)[:, None, None]
        out = []
        for layer, (queue, empty) in enumerate(zip(queues, m.init_state(1)["empty"])):
            queue = torch.where(new_item, empty.detach(), queue)
            out.append(torch.cat([queue[:, 1:], h[:, None]], dim=1))
            h = m._level(layer, torch.cat([queue[:, 0], h], dim=-1)[:, None], None)[:, 0]
        return (m.lm_head(h), *out)

    def score(self, idx, label):
        m = self.model  # WaveNet.forward with starts_of for segment_starts
        T = idx.size(1)
        vectors = self.label_vectors(label, idx)
        idx = F.pad(idx, (1, 0), value=BOUNDARY)  # column 0: "before the start", which has no label
        starts, t = starts_of(idx), torch.arange(T + 1)
        h = m.wte(idx) if label is None else m.wte(idx) + F.pad(vectors, (0, 0, 1, 0))
        for layer in range(m.config.n_layer):
            d = m.dilation(layer)
            before_start = h[:, :1]
            shifted = torch.cat([before_start.expand(-1, d, -1), h], dim=1)[:, : T + 1]
            before = torch.where((t - d >= starts)[..., None], shifted, before_start)
            h = m._level(layer, torch.cat([before, h], dim=-1), None)
        return m.lm_head(h[:, 1:])


class Transformer(Graphs):
    """Rolling window state; logits of the window read from position 0 (what the package's step computes)."""

    def initial_state(self, batch, label=None):
        return [torch.zeros(batch, self.model.config.block_size - 1, dtype=torch.long)]

    def window_logits(self, window: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        m = self.model
        starts = starts_of(window)
        x = m.wte(window) + m.wpe(torch.arange(window.size(1)) - starts) + self.label_vectors(label, window)
        return m._decode(x, visible_keys(starts), None)[:, -1]

    def step(self, ids, label, window):
        window = torch.cat([window, ids[:, None]], dim=1)
        return self.window_logits(window, label), window[:, 1:]

    def score(self, idx, label):
        B, T = idx.shape
        bs = self.model.config.block_size  # every position: its last block_size tokens, boundary-padded
        padded = torch.cat([torch.zeros(B, bs - 1, dtype=idx.dtype), idx], dim=1)
        windows = padded.unfold(1, bs, 1).reshape(-1, bs)  # (B * T, bs)
        labels = None if label is None else label[:, None].expand(B, T).reshape(-1)
        return self.window_logits(windows, labels).view(B, T, -1)


class Mix(Graphs):
    """Its members' graphs side by side (onnx_mix.py joins them); the state: every member's, in order."""

    def __init__(self, model):
        super().__init__(model)
        self.parts = nn.ModuleList(graphs(m) for m in model.members)

    def initial_state(self, batch, label=None):
        return [s for p in self.parts for s in p.initial_state(batch, label)]


STEPS: dict[str, type[Graphs]] = {
    "bigram": Stateless,
    "mlp": Context,
    "wavenet": WaveNet,
    "rnn": Recurrent,
    "gru": Recurrent,
    "lstm": Recurrent,
    "transformer": Transformer,
    "mix": Mix,
}  # the n-gram: see families.NGRAM_ONNX


def graphs(model: LanguageModel) -> Graphs:
    return STEPS[model_name(model)](model).eval()


def batch_axes(g: Graphs) -> list[int]:
    if isinstance(g, Mix):
        return [a for p in g.parts for a in batch_axes(p)]
    return [g.batch_axis] * len(g.initial_state(1))


__all__ = ["STEPS", "Graphs", "batch_axes", "graphs", "starts_of", "with_label_token"]
