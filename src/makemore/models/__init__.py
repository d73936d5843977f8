"""The model registry: one explicit entry per model family. Adding a model = one file + one entry here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import LanguageModel
from .bigram import Bigram, BigramConfig
from .mlp import MLP, MLPConfig
from .ngram import NGram, NGramConfig


@dataclass(frozen=True)
class ModelSpec:
    config_class: type
    model_class: type[LanguageModel]
    summary: str
    train_defaults: dict[str, Any] = field(default_factory=dict)  # recommended training settings for this model


MODELS: dict[str, ModelSpec] = {
    "ngram": ModelSpec(NGramConfig, NGram, "count n-gram table, add-k smoothing; fitted in closed form"),
    "bigram": ModelSpec(
        BigramConfig,
        Bigram,
        "neural bigram: V x V logit table, L2-regularised",
        {"lr": 0.1, "max_steps": 3000, "batch_size": 256, "weight_decay": 0.0},
    ),
    "mlp": ModelSpec(
        MLPConfig,
        MLP,
        "Bengio et al. 2003: embeddings of the last k chars -> tanh MLP",
        {"lr": 3e-3, "max_steps": 20000, "batch_size": 64, "weight_decay": 0.1},
    ),
}
DEFAULT_MODEL = "mlp"


def build_model(name: str, config: Any, vocab_size: int) -> LanguageModel:
    return MODELS[name].model_class(config, vocab_size)
