"""The labelled n-gram: one count model per label, interpolated with a model of all labels together.

    p(w | h, k) = lambda_k p_k(w | h) + (1 - lambda_k) p_shared(w | h)

p_shared is fitted on every training item (its order and discounts chosen on all of val, as `ngram` does), p_k on
the items of label k (order and discounts chosen on val's items of label k when it has enough of them, else the
shared model's order and standard discounts), and lambda_k by EM on val's items of label k (Jelinek & Mercer 1980,
as `makemore mix` does). A label with few items leans on the shared model; one with many on its own. Each p_k and
p_shared sums to 1 over the vocabulary, so the interpolation does too, for every context and label.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from makemore.models.base import LanguageModel, sequence_nll
from makemore.models.labels import take_labels
from makemore.models.mix_weights import fit_weights
from makemore.models.ngram import NGram, NGramConfig, context_windows

MIN_VAL_ITEMS = 20  # a label's own held-out choices (order, discounts) need at least this many val items


class Rows:
    """Inputs and targets of some items, as NGram.fit reads a split."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)


def by_label(split: Any, vocab_size: int) -> tuple[Rows, torch.Tensor]:
    """A labelled split's rows with the label tokens read as the boundary, and the label of each row."""
    inputs, labels = take_labels(split.inputs, vocab_size)
    return Rows(inputs, split.targets), labels


def subset(rows: Rows, keep: torch.Tensor) -> Rows:
    return Rows(rows.inputs[keep], rows.targets[keep])


class LabelledNGram(LanguageModel):
    trainable = False

    def __init__(self, config: NGramConfig, vocab_size: int, n_labels: int):
        super().__init__(config, vocab_size)
        self.n_labels, self.label_mode = n_labels, "interpolate"
        self.shared = NGram(config, vocab_size)
        self.per_label = nn.ModuleList(NGram(config, vocab_size) for _ in range(n_labels))
        self.register_buffer("label_weights", torch.full((n_labels,), 0.5, dtype=torch.float64))  # lambda_k

    @property
    def order(self) -> int:
        """The shared model's order (what --order auto chose for it; each label's own is in its model)."""
        return self.shared.order

    @property
    def context_size(self) -> int:
        return max(model.context_size for model in [self.shared, *self.per_label])

    def fit(self, split: Any, val: Any = None) -> None:
        train_rows, train_labels = by_label(split, self.vocab_size)
        val_rows, val_labels = by_label(val, self.vocab_size) if val is not None and len(val) else (None, None)
        self.shared.fit(train_rows, val_rows)
        for k, model in enumerate(self.per_label):
            own_val = subset(val_rows, val_labels == k) if val_rows is not None else None
            enough = own_val is not None and len(own_val) >= MIN_VAL_ITEMS
            if not enough:  # too little held-out data of its own: the shared model's order, standard discounts
                model.config = dataclasses.replace(self.config, order=self.shared.order, tune_discounts=False)
            model.fit(subset(train_rows, train_labels == k), own_val if enough else None)
            model.config = self.config  # what a loaded run has; the fitted order is in the model's buffers
            if own_val is not None and len(own_val):
                self.label_weights[k] = self._fit_weight(model, own_val)

    @torch.no_grad()
    def _fit_weight(self, model: NGram, rows: Rows) -> float:
        real = rows.targets != -1
        picked = []
        for member in (model, self.shared):
            logp = self._log_probs(member, rows.inputs)
            picked.append(logp.gather(-1, rows.targets.clamp(min=0)[..., None])[..., 0][real])
        return float(fit_weights(torch.stack(picked))[0])

    @staticmethod
    def _log_probs(model: NGram, idx: torch.Tensor) -> torch.Tensor:
        return model.log_probs(context_windows(idx, model.order - 1))  # (B, T, V), float64

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        idx, labels = take_labels(idx, self.vocab_size)
        logp = self._log_probs(self.shared, idx)  # rows without a label: the shared model
        for k in labels.unique().tolist():
            if k < 0:
                continue
            rows = (labels == k).nonzero(as_tuple=True)[0]
            weight = float(self.label_weights[k])
            own = self._log_probs(self.per_label[k], idx[rows])
            if weight >= 1.0:
                logp[rows] = own
            elif weight > 0.0:
                mixed = torch.stack([own + math.log(weight), logp[rows] + math.log1p(-weight)])
                logp[rows] = torch.logsumexp(mixed, dim=0)
        logits = logp.float()
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss
