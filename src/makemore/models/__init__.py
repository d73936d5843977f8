"""The model registry: one explicit entry per model family. Adding a model = one file + one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from makemore.limits import allocation_budget
from makemore.models.base import LanguageModel
from makemore.models.bigram import Bigram, BigramConfig
from makemore.models.knn import KNNLM, KNNConfig
from makemore.models.mix import Mix, MixConfig
from makemore.models.mlp import MLP, MLPConfig
from makemore.models.ngram import NGram, NGramConfig
from makemore.models.ngram_labels import LabelledNGram
from makemore.models.rnn import GRU, LSTM, RNN, GRUConfig, LSTMConfig, RNNConfig
from makemore.models.transformer import Transformer, TransformerConfig
from makemore.models.wavenet import WaveNet, WaveNetConfig


@dataclass(frozen=True)
class ModelSpec:
    config_class: type
    model_class: type[LanguageModel]
    summary: str
    train_defaults: dict[str, Any] = field(default_factory=dict)  # recommended training settings for this model
    made_by: str = ""  # set for models that `makemore train` cannot make: the command that does
    presets: dict[str, Preset] = field(default_factory=dict)  # `makemore train --preset NAME`


@dataclass(frozen=True)
class Preset:
    """A named recommendation for another budget or data: model and training settings over the defaults (flags
    given on the command line still win)."""

    summary: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# The neural ladder's recommended training: at most 10 minutes (the quality targets' budget on a 2-core CPU: after
# a short timed start the budget becomes the schedule's length in steps, fixed once and recorded), or max_steps
# where a faster machine gets there first; the weights kept are the best by val, and training stops after
# `patience` evaluations without improvement.
TEN_MINUTES: dict[str, Any] = {"time_budget": 600.0, "eval_every": 500, "patience": 10}

MODELS: dict[str, ModelSpec] = {
    "ngram": ModelSpec(
        NGramConfig,
        NGram,
        "count n-gram, interpolated modified Kneser-Ney (order and discounts chosen on val) or add-k; closed form",
    ),
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
        # The default `makemore train` job: at most 100 s (the budget becomes the schedule's length), and early
        # stopping once val stops improving on small datasets.
        {"lr": 3e-3, "max_steps": 20000, "time_budget": 100.0, "batch_size": 64, "weight_decay": 0.1, "patience": 6},
    ),
    "wavenet": ModelSpec(
        WaveNetConfig,
        WaveNet,
        "van den Oord et al. 2016 / lecture 5: causal dilated pair fusion, BatchNorm, tanh",
        {**TEN_MINUTES, "lr": 3e-3, "max_steps": 30000, "batch_size": 32, "weight_decay": 0.1},
    ),
    "rnn": ModelSpec(
        RNNConfig,
        RNN,
        "Elman 1990 recurrent net (fused nn.RNN), learned initial state, optional identity init",
        {**TEN_MINUTES, "lr": 2e-3, "max_steps": 40000, "batch_size": 64, "weight_decay": 0.01},
    ),
    "gru": ModelSpec(
        GRUConfig,
        GRU,
        "Cho et al. 2014 gated recurrent unit (fused nn.GRU), stacked, dropout",
        {**TEN_MINUTES, "lr": 3e-3, "max_steps": 20000, "batch_size": 64, "weight_decay": 0.1},
    ),
    "lstm": ModelSpec(
        LSTMConfig,
        LSTM,
        "Hochreiter & Schmidhuber 1997 LSTM (fused nn.LSTM), stacked, dropout",
        {**TEN_MINUTES, "lr": 3e-3, "max_steps": 20000, "batch_size": 64, "weight_decay": 0.1},
    ),
    "transformer": ModelSpec(
        TransformerConfig,
        Transformer,
        "GPT-style decoder: pre-LN, causal self-attention (SDPA), learned positions, KV-cache decoding",
        # batches of batch_size x (longest item) slots, in packed rows of 32 (~4.5 names each; TrainConfig.pack_width:
        # 99.8% of the slots hold names, against 93.5% in rows of 16)
        {
            **TEN_MINUTES,
            "lr": 3e-3,
            "max_steps": 30000,
            "batch_size": 32,
            "weight_decay": 0.2,
            "warmup_steps": 200,
            "ema": 0.999,
            "pack_width": 32,
            "row_shards": 2,
        },  # fmt: skip
        # row_shards 2: each batch as two shards of rows on two threads, the same numbers on every machine. At
        # makemore's size (4 x 64, dropout 0), side by side on the 2-core CPU: 29.3k / 28.7k / 29.1k useful tokens/s
        # on one thread, 38.0k / 36.0k / 37.3k with two shards (+25%), 31.7k / 36.0k / 37.7k with two intra-op
        # threads (benchmarks/throughput.py, 20 s each; makemore's own 11.7k / 12.2k / 12.7k on its two threads).
        # defaults (3 layers, dropout 0.15, weight decay 0.2, --ema 0.999) measured on names in 10 min, alone on the
        # 2-core CPU: val 1.9294 (best at step 13,500 of 18,165). Alone, with --ema 0.999: dropout 0.2 and weight
        # decay 0.1 1.9383 (14,241 steps, still improving); dropout 0.15 1.9360 (best at 11,000 of 14,209). Without
        # averaging (an earlier session): dropout 0.2 1.9461 (13,866 steps); 0.1 1.9577; 0.3 1.9518. Pairs side by
        # side (1 thread each, ~11-12k steps), all --ema 0.999: --ema 0.9995 1.9422 vs 1.9413; dropout 0.25 1.9542
        # vs weight decay 0.3 1.9435
        presets={
            # the best of the 90-second probes on names (2-core CPU, 1 thread): 2 layers, batch 64, lr 5e-3 val 2.029;
            # lr 3e-3 batch 32: 2.053; lr 6e-3: 2.043; batch 128 lr 6e-3: 2.047; batch 64 lr 8e-3: 2.044; 3 layers 2.069
            # Then in pairs of runs side by side (1 thread each): dropout 0.1 2.0118, with --ema 0.99 2.0081 and
            # 2.0042; dropout 0 with --ema 0.99 1.9950 and 1.9926, with --ema 0.995 1.9891 (in 90 s nothing overfits,
            # and the average smooths the high learning rate's noise); --ema 0.99 with warmup 50: 2.0227; with
            # min_lr_ratio 0: 2.0134
            "fast": Preset(
                "90 s of training: 2 layers, no dropout, batch 64, lr 5e-3, weights averaged (--ema 0.995)",
                {"n_layer": 2, "dropout": 0.0},
                {"time_budget": 90.0, "batch_size": 64, "lr": 5e-3, "ema": 0.995},
            ),
            # Tiny Shakespeare (--mode stream), pairs side by side, 1 thread each, 15 min (~2,100 steps), val:
            # lr 2e-3 1.6274 vs 4e-3 1.5538; 6e-3 1.5503 vs 1e-2 1.5723. Alone, automatic threads, lr 5e-3: 1.4741
            # (3,742 steps; lr 2e-3 with eval every 500 had given 1.5326)
            "stream": Preset(
                "continuous text in 15 min: windows of 128, 4 layers of 128, dropout 0.1, lr 5e-3, --ema 0.999",
                {"block_size": 128, "n_layer": 4, "n_embd": 128, "dropout": 0.1},
                {"time_budget": 900.0, "max_steps": 1_000_000, "lr": 5e-3, "eval_every": 1000, "ema": 0.999},
            ),
        },
    ),
    "mix": ModelSpec(
        MixConfig,
        Mix,
        "Jelinek & Mercer 1980 / Klakow 1998: linear or log-linear interpolation of trained runs, weights fitted "
        "on val (makemore mix)",
        made_by="makemore mix RUN [RUN...] --out RUN_MIX",
    ),
    "knn": ModelSpec(
        KNNConfig,
        KNNLM,
        "Khandelwal et al. 2020: a trained network plus the nearest of its training states (a kNN-LM), "
        "interpolated; settings chosen on val (makemore knn)",
        made_by="makemore knn RUN --out RUN_KNN",
    ),
}
DEFAULT_MODEL = "mlp"


def build_model(
    name: str,
    config: Any,
    vocab_size: int,
    load_member: Callable[[int], LanguageModel] | None = None,
    n_labels: int = 0,
    label_mode: str = "add",
) -> LanguageModel:
    """Build a model. An absurd size (from a flag or a downloaded run.json) raises ValueError before the memory is
    allocated: the build runs under an allocation budget (see limits.py). A model made of other models (a mix) gets
    them from `load_member(i)`, which the caller supplies: models never read run directories themselves.
    `n_labels` > 0: the model conditioned on a label (models/labels.py); 0 builds exactly the unlabelled model."""
    model_class = MODELS[name].model_class
    with allocation_budget():
        if n_labels and model_class is NGram:  # counts per label, interpolated with the shared counts
            return LabelledNGram(config, vocab_size, n_labels)
        if load_member is not None:
            model = model_class.from_members(config, vocab_size, load_member)
        else:
            model = model_class(config, vocab_size)
        return model.add_labels(n_labels, label_mode) if n_labels else model
