"""What a labelled run does with its labels: sample under a label or a blend, classify items, evaluate per label.

Classification is Bayes' rule on the conditional model:  p(label | item) ∝ p(item | label) p(label), with p(label)
the labels' shares of the training items. Any labelled model is a classifier for free (a name -> sex or language
classifier), and the unconditional probability of an item is the same sum:  p(item) = sum_k p(item | k) p(k).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from makemore.data.labels import LabelledSplit
from makemore.data.lines import IGNORE, Vocab
from makemore.errors import MakemoreError
from makemore.models import LanguageModel
from makemore.models.labels import Conditioned, Guided, LabelTable, label_weights

BLENDS = ("mixture", "embedding")
# Sampling under one label guides by default (w = 1.5): the samples a user asks "female" names for are classified as
# female by the same run, not only drawn from p(item | label), in which names typical of another label keep their
# share. First names by sex, 1,000 samples per label, the share the run classifies as that label (female / male),
# w = 0 / 1 / 1.5 / 2: a GRU of 3,000 steps, male 0.868 / 0.968 / - / 0.988; a GRU of `--time-budget 300` (6,500
# steps) male 0.865 / 0.974 / 0.987 / 0.996 (distinct items 92% / 88% / 84% / 80%), another (6,000 steps) male
# 0.811 / 0.942 at w = 1; female 0.97-0.98 unguided, 0.99 and more guided (benchmarks/results/labels.md). w = 1
# left one of three runs under 95% for the smaller label; 1.5 keeps a margin at ~4 points of distinct items.
DEFAULT_LABEL_GUIDANCE = 1.5


def run_labels(data_info: dict[str, Any]) -> list[str]:
    return list(data_info.get("labels") or [])


def run_prior(data_info: dict[str, Any]) -> list[float]:
    """p(label): each label's share of the training items."""
    names = run_labels(data_info)
    counts = (data_info.get("label_counts") or {}).get("train") or {}
    values = [float(counts.get(name, 0)) for name in names]
    total = sum(values)
    return [v / total for v in values] if total > 0 else [1.0 / len(names)] * len(names)


def conditioned(
    model: LanguageModel,
    data_info: dict[str, Any],
    label: str | dict[str, float] | None = None,
    blend: str = "mixture",
    guidance: float | None = 0.0,
) -> LanguageModel:
    """The model as decoders and scorers take it: a labelled run under `label` ('female', 'female=0.7,male=0.3' or
    {name: weight}); without a label, the unconditional p(item) = sum_k p(k) p(item | k). `guidance` > 0 (one label):
    items more typical of the label (`Guided`); None: DEFAULT_LABEL_GUIDANCE for one label, none for a blend. An
    unlabelled run's model is returned as it is (a label for it is an error)."""
    names = run_labels(data_info)
    if not names:
        if label is not None:
            raise MakemoreError("--label: this run was trained without labels")
        return model
    if blend not in BLENDS:
        raise MakemoreError(f"--blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    if label is None:
        return Conditioned(model, torch.tensor(run_prior(data_info)), posterior=True)
    weights = label_weights(names, label, run_prior(data_info))
    single = int((weights > 0).sum()) == 1
    if guidance is None:
        guidance = DEFAULT_LABEL_GUIDANCE if single and len(names) > 1 else 0.0
    if guidance:
        if not (math.isfinite(guidance) and guidance > 0):
            raise MakemoreError(f"--label-guidance must be a number >= 0, got {guidance}")
        if not single:
            raise MakemoreError("--label-guidance guides towards one label, not a blend")
        return Guided(model, int(weights.argmax()), torch.tensor(run_prior(data_info)), guidance)
    if blend == "embedding" and int((weights > 0).sum()) > 1:
        if not any(isinstance(module, LabelTable) for module in model.modules()):
            raise MakemoreError("--blend embedding: this model has no label embedding to interpolate (use mixture)")
        return Conditioned(model, weights, embedding=True)
    return Conditioned(model, weights)


@torch.inference_mode()
def label_logprobs(
    model: LanguageModel, vocab: Vocab, items: list[str], n_labels: int, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(item | label) for every item and label (N, n_labels), float64, and each item's predicted tokens (N,)."""
    for item in items:
        vocab.check(item, "item")
    model.eval()
    n = len(items)
    split = LabelledSplit(items * n_labels, [k for k in range(n_labels) for _ in range(n)], vocab)
    out = torch.zeros(n * n_labels, dtype=torch.float64)
    order = torch.argsort(split.lengths, stable=True)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        x, y = split.rows(index)
        logits, _ = model(x.to(model.device))
        logp = torch.log_softmax(logits.double(), dim=-1)
        picked = logp.gather(-1, y.clamp(min=0).to(logp.device)[..., None])[..., 0].cpu()
        out[index] = (picked * (y != IGNORE)).sum(dim=1)
    return out.view(n_labels, n).T.contiguous(), split.lengths[:n].clone()


def posteriors(logprobs: torch.Tensor, prior: list[float]) -> torch.Tensor:
    """p(label | item) (N, K) from log p(item | label) (N, K) and p(label) (K,)."""
    log_prior = torch.tensor([math.log(p) if p > 0 else -math.inf for p in prior], dtype=torch.float64)
    return torch.softmax(logprobs + log_prior, dim=1)


def classify_items(
    model: LanguageModel, vocab: Vocab, data_info: dict[str, Any], items: list[str], batch_size: int = 512
) -> list[dict[str, Any]]:
    """For each item: item, label (the most probable), probs ({label: p(label | item)}, summing to 1)."""
    names = run_labels(data_info)
    if not names:
        raise MakemoreError("classify: this run was trained without labels (train with --labelled)")
    if not items:
        return []
    logprobs, _ = label_logprobs(model, vocab, items, len(names), batch_size)
    probs = posteriors(logprobs, run_prior(data_info))
    out = []
    for item, row in zip(items, probs.tolist()):
        best = max(range(len(names)), key=lambda k: row[k])
        out.append({"item": item, "label": names[best], "probs": dict(zip(names, row))})
    return out


def label_report(
    model: LanguageModel, vocab: Vocab, data_info: dict[str, Any], items: list[str], labels: list[str]
) -> dict[str, Any]:
    """A labelled split evaluated: the NLL (nats/token) of each item given its true label, per label and overall;
    the unconditional NLL of the same items (-log sum_k p(k) p(item | k)); classification accuracy, the majority
    class's accuracy, and the confusion matrix (rows: true label, columns: predicted)."""
    names = run_labels(data_info)
    if len(labels) != len(items):
        raise MakemoreError(f"{len(items)} items but {len(labels)} labels (a run's .labels.txt file does not match)")
    index = {name: k for k, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise MakemoreError(f"label {unknown[0]!r} is not a label of this run (labels: {', '.join(names)})")
    logprobs, tokens = label_logprobs(model, vocab, items, len(names))
    truth = torch.tensor([index[label] for label in labels])
    prior = torch.tensor(run_prior(data_info), dtype=torch.float64)
    true_logp = logprobs.gather(1, truth[:, None])[:, 0]
    marginal = torch.logsumexp(logprobs + prior.log(), dim=1)
    predicted = posteriors(logprobs, prior.tolist()).argmax(dim=1)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    total_tokens = float(tokens.sum())
    per_label = {}
    for k, name in enumerate(names):
        rows = truth == k
        if rows.any():
            per_label[name] = {
                "items": int(rows.sum()),
                "nll": float(-true_logp[rows].sum() / tokens[rows].sum()),
                "unconditional_nll": float(-marginal[rows].sum() / tokens[rows].sum()),
                "accuracy": float((predicted[rows] == k).double().mean()),
            }
    counts = torch.bincount(truth, minlength=len(names))
    return {
        "items": len(items),
        "tokens": int(total_tokens),
        "nll": float(-true_logp.sum() / total_tokens),
        "unconditional_nll": float(-marginal.sum() / total_tokens),
        "accuracy": float((predicted == truth).double().mean()),
        "majority_accuracy": float(counts.max() / counts.sum()),
        "per_label": per_label,
        "labels": names,
        "confusion": confusion.tolist(),
    }
