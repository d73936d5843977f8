"""Labels: conditional models p(item | label), and a labelled model seen as an unconditional one.

A labelled item is read as  LABEL e m m a BOUNDARY: its first input token is not the boundary but a label token,
id vocab_size + label (never a target, so the output layer keeps its V symbols). The trainer, evaluator and batching
see ordinary token rows; a labelled model's `forward` takes the label from its first column (`take_labels`) and
feeds it to the network through a learned label embedding (PyTorch's names tutorial feeds a one-hot category at
every step; the fast.ai char-RNN lesson compares adding with concatenating inputs):

    add     the label vector is added to every input embedding
    concat  the label vector is concatenated to every input embedding (the first layer reads both)
    state   the label sets the start: a per-label initial state (recurrent models), else the start token's
            embedding alone carries it

`Conditioned` turns a labelled model into an unconditional one for decoders, scorers and searches that know nothing
of labels: every item starts with one label (weights {k: 1}), a blend of labels (a mixture of the conditional
next-character distributions at every step), or, with `posterior=True`, the marginal p(item) = sum_k p(k) p(item|k)
(the label weights updated by Bayes' rule as the characters come in, so the mixture is exactly the marginal).
It decodes by re-reading the prefix at every step (the base class's fallback; items are short).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from makemore.data.lines import BOUNDARY
from makemore.errors import MakemoreError
from makemore.models.base import LanguageModel, segment_starts, sequence_nll

LABEL_MODES = ("add", "concat", "state")
# Measured on first names by sex (benchmarks/results/labels.md; fixed steps, 2 seeds, val): classification accuracy
# GRU add 0.9255, concat 0.9244, state 0.9172; MLP add 0.8944, concat 0.8934, state 0.8302. Concat's val NLL was
# lower by 0.003-0.004 nats; add classifies best, has the fewest parameters and every neural family takes it.
DEFAULT_LABEL_MODE = "add"
FAMILY_LABEL_MODES = {"ngram": "interpolate", "mix": "members"}  # count models and mixes: no label embedding


def default_label_mode(model_name: str) -> str:
    """--label-mode when not given (chosen by measurement: benchmarks/results/labels.md)."""
    return FAMILY_LABEL_MODES.get(model_name, DEFAULT_LABEL_MODE)


def take_labels(idx: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx with its label tokens read as the boundary, labels (B,)): the label of each row from its first token,
    -1 for rows that start with the boundary (no label: the model gets a zero label vector)."""
    first = idx[:, :1]
    has = first >= vocab_size
    labels = torch.where(has, first - vocab_size, -1)[:, 0]
    return torch.cat([first.masked_fill(has, BOUNDARY), idx[:, 1:]], dim=1), labels


def take_item_labels(idx: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For packed rows (several items each, `packable` models): idx with every label token read as the boundary,
    the label of the item each position belongs to (B, T) (-1: none), and where the items start (B, T)."""
    at_start = idx >= vocab_size
    plain = idx.masked_fill(at_start, BOUNDARY)
    labels = torch.where(at_start, idx - vocab_size, -1).gather(1, segment_starts(plain))
    return plain, labels, at_start


class LabelTable(nn.Module):
    """One learned vector per label; rows without a label (-1) get zeros."""

    def __init__(self, n_labels: int, dim: int, std: float = 1.0):
        super().__init__()
        self.table = nn.Embedding(n_labels, dim)
        nn.init.normal_(self.table.weight, std=std)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        vectors = self.table(labels.clamp(min=0))  # (..., dim)
        return vectors * (labels >= 0)[..., None].to(vectors.dtype)


def check_mode(family: str, mode: str, allowed: tuple[str, ...] = LABEL_MODES) -> None:
    if mode not in allowed:
        raise MakemoreError(f"--label-mode {mode}: {family} takes {', '.join(allowed)}")


def label_token(vocab_size: int, label: int) -> int:
    return vocab_size + label


class Conditioned(LanguageModel):
    """A labelled model as an unconditional one (see the module docstring). `weights` (n_labels,) sum to 1."""

    trainable = False

    def __init__(self, model: LanguageModel, weights: torch.Tensor, posterior: bool = False, embedding: bool = False):
        super().__init__(model.config, model.vocab_size)
        self.model = model
        self.weights = weights.double()
        self.posterior = posterior
        self.active = [k for k, w in enumerate(self.weights.tolist()) if w > 0]  # zero weights: no work, no effect
        # --blend embedding: one model whose label vectors are the weighted mean of the labels' (read as label 0)
        self.embedding = embedding and len(self.active) > 1
        if self.embedding:
            self.active = [0]

    @contextlib.contextmanager
    def blended_tables(self) -> Iterator[None]:
        """Label 0's vectors replaced by the blend of every label's, in every label table, for the duration."""
        if not self.embedding:
            yield
            return
        tables = [m.table.weight for m in self.model.modules() if isinstance(m, LabelTable)]
        saved = [table.data[0].clone() for table in tables]
        with torch.no_grad():
            for table in tables:
                table.data[0] = self.weights.to(table.device, table.dtype) @ table.data
        try:
            yield
        finally:
            with torch.no_grad():
                for table, row in zip(tables, saved):
                    table.data[0] = row

    @property
    def context_size(self) -> None:
        return None  # the label is at the start: decoding re-reads the whole item

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        with self.blended_tables():
            outputs = [self.model(with_label(idx, self.vocab_size, k))[0] for k in self.active]
        if len(outputs) == 1:  # one label: exactly the model conditioned on it
            logits = outputs[0]
        else:
            logp = torch.stack([F.log_softmax(o.double(), dim=-1) for o in outputs])  # (K, B, T, V)
            log_w = torch.tensor([math.log(self.weights[k]) for k in self.active], dtype=torch.float64)
            logits = mixed_logprobs(logp, idx, log_w, self.posterior).float()
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss


class Guided(LanguageModel):
    """A labelled model drawing items typical of one label: classifier-free guidance (Ho & Salimans 2022) at every
    character,  log p_w(c | h) = log p(c | h, k) + w (log p(c | h, k) - log p(c | h)),  p(c | h) the marginal over
    labels (prior weights updated by Bayes' rule as the characters come in). w = 0 is plain conditioning; w = 1
    weighs each item by p(k | item) too (up to the per-character normalisation), so the labels separate more."""

    trainable = False

    def __init__(self, model: LanguageModel, label: int, prior: torch.Tensor, guidance: float):
        super().__init__(model.config, model.vocab_size)
        self.model, self.label, self.guidance = model, label, guidance
        self.log_prior = prior.double().log()

    @property
    def context_size(self) -> None:
        return None  # the label is at the start: decoding re-reads the whole item

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        outputs = [self.model(with_label(idx, self.vocab_size, k))[0] for k in range(len(self.log_prior))]
        logp = torch.stack([F.log_softmax(o.double(), dim=-1) for o in outputs])  # (K, B, T, V)
        marginal = mixed_logprobs(logp, idx, self.log_prior, posterior=True)  # (B, T, V)
        logits = (logp[self.label] + self.guidance * (logp[self.label] - marginal)).float()
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss


def with_label(idx: torch.Tensor, vocab_size: int, label: int) -> torch.Tensor:
    """Rows idx (B, T) that start with the boundary, with that first token read as the label's token."""
    first = idx[:, :1]
    return torch.cat([first.masked_fill(first == BOUNDARY, label_token(vocab_size, label)), idx[:, 1:]], 1)


def mixed_logprobs(logp: torch.Tensor, idx: torch.Tensor, log_w: torch.Tensor, posterior: bool) -> torch.Tensor:
    """log sum_k w_k p(c | h, k) (B, T, V) from the labels' log-probs logp (K, B, T, V) and log weights log_w (K,);
    with `posterior`, the weights at each position are p(k | characters so far) ∝ w_k prod_s p(c_s | c_<s, k), so
    the mixture is exactly the marginal of the items."""
    log_w = log_w.to(logp.device)[:, None, None].expand(-1, idx.size(0), idx.size(1)).clone()  # (K, B, T)
    if posterior and idx.size(1) > 1:
        seen = logp[:, :, :-1].gather(-1, idx[None, :, 1:, None].expand(logp.size(0), -1, -1, 1))[..., 0]
        log_w[:, :, 1:] += seen.cumsum(dim=2)
        log_w = log_w - torch.logsumexp(log_w, dim=0, keepdim=True)
    return torch.logsumexp(logp + log_w[..., None], dim=0)


def label_weights(labels: list[str], spec: str | dict[str, float] | None, prior: list[float]) -> torch.Tensor:
    """Weights (n_labels,) from 'female', 'female=0.7,male=0.3' or {'female': 0.7, ...}; None: the prior."""
    if spec is None:
        return torch.tensor(prior, dtype=torch.float64)
    if isinstance(spec, str):
        parts = {}
        for part in spec.split(","):
            name, _, value = part.partition("=")
            try:
                parts[name.strip()] = float(value) if value else 1.0
            except ValueError:
                raise MakemoreError(f"--label {spec!r}: expected LABEL or LABEL=WEIGHT,LABEL=WEIGHT") from None
        spec = parts
    unknown = [name for name in spec if name not in labels]
    if unknown:
        raise MakemoreError(f"--label {unknown[0]!r}: not a label of this run (labels: {', '.join(labels)})")
    weights = torch.zeros(len(labels), dtype=torch.float64)
    for name, value in spec.items():
        if not (value >= 0 and math.isfinite(value)):
            raise MakemoreError(f"--label {name}={value}: weights must be finite and >= 0")
        weights[labels.index(name)] = value
    if weights.sum() <= 0:
        raise MakemoreError("--label: the weights must not all be 0")
    return weights / weights.sum()
