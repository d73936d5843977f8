"""What an export needs from each model family, in one table: the family the exported samplers implement (NumPy
template, JavaScript page), its settings, its arrays, and whether ONNX can carry it.

An exported model is a spec (JSON: family, settings, members for a mix) plus named arrays: the run's own weights
under their PyTorch names (the samplers read those names), or derived tables where the saved state is not what
scoring uses (the n-gram's lookup tables). A mix's members sit under "members.<i>." as in its state dict.

A labelled (conditional) model's spec has n_labels and label_mode (add, concat, state: how its label layers read the
label, models/labels.py), and its label tables are among its arrays. The labelled n-gram is the family
"labelled_ngram": its shared model and each label's model as members (shared first), weights = lambda_k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from makemore.errors import MakemoreError
from makemore.models import MODELS, LanguageModel
from makemore.models.ngram_labels import LabelledNGram


@dataclass(frozen=True)
class Family:
    family: str  # the class in the exported samplers that computes it
    settings: Callable[[LanguageModel], dict[str, Any]]  # extra spec entries beyond the model config
    arrays: Callable[[LanguageModel], dict[str, np.ndarray]]
    onnx: str | None = None  # why ONNX cannot carry it (None: it can)


def _state_arrays(model: LanguageModel) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}


def _ngram_arrays(model: LanguageModel) -> dict[str, np.ndarray]:
    # the derived scoring tables (NGram._prepare), not the raw counts: the samplers then need no Kneser-Ney code
    names = ("ctx_offsets", "ctx_keys", "ctx_starts", "ctx_sizes", "ctx_back", "symbols", "shares")
    return {name: getattr(model, name).detach().cpu().numpy() for name in names}


def _memory_arrays(model: LanguageModel) -> dict[str, np.ndarray]:
    # the memory; the network's weights come with its member entry (describe)
    return {
        name: getattr(model, name).detach().cpu().numpy()
        for name in ("mean", "axes", "keys", "offsets", "next_tokens", "next_counts", "centres", "starts")
    }


def _none(model: LanguageModel) -> dict[str, Any]:
    return {}


def _cell(name: str) -> Callable[[LanguageModel], dict[str, Any]]:
    def settings(model: LanguageModel) -> dict[str, Any]:
        if name == "rnn":
            return {"cell": f"rnn_{model.config.nonlinearity}"}
        return {"cell": name}

    return settings


NGRAM_ONNX = "ONNX cannot carry the ngram model (its step is a binary search in sparse count tables); use numpy or html"
KNN_ONNX = "ONNX cannot carry the knn model (its step is a nearest-neighbour search in its memory); use numpy or html"
FAMILIES: dict[str, Family] = {
    "ngram": Family("ngram", lambda m: {"order": m.order, "vocab_size": m.vocab_size}, _ngram_arrays, onnx=NGRAM_ONNX),
    "bigram": Family("bigram", _none, _state_arrays),
    "mlp": Family("mlp", _none, _state_arrays),
    "wavenet": Family("wavenet", _none, _state_arrays),
    "rnn": Family("recurrent", _cell("rnn"), _state_arrays),
    "gru": Family("recurrent", _cell("gru"), _state_arrays),
    "lstm": Family("recurrent", _cell("lstm"), _state_arrays),
    "transformer": Family("transformer", _none, _state_arrays),
    "mix": Family("mix", _none, _state_arrays),  # members are described recursively (describe)
    "knn": Family("knn", _none, _memory_arrays, onnx=KNN_ONNX),  # its network: members[0]
}
LABELLED_NGRAM = Family("labelled_ngram", _none, _none, onnx=NGRAM_ONNX)  # weights: lambda_k
NAMES = {spec.model_class: name for name, spec in MODELS.items()} | {LabelledNGram: "ngram"}


def model_name(model: LanguageModel) -> str:
    """The registry name of a model, once it has an entry here (tests/test_export.py checks every model has)."""
    name = NAMES.get(type(model), type(model).__name__)
    if name not in FAMILIES:
        raise MakemoreError(f"export does not know the {name} model yet (makemore/export/families.py)")
    return name


def describe(model: LanguageModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(spec, arrays) of a model; a mix's members (a labelled n-gram's models) recursively, under "members.<i>."."""
    name = model_name(model)
    family, members = FAMILIES[name], []
    if isinstance(model, LabelledNGram):  # its shared model, then each label's
        family, members = LABELLED_NGRAM, [model.shared, *model.per_label]
    elif name in ("mix", "knn"):
        members = list(model.members)
    spec = {"family": family.family, "model": name, "config": asdict(model.config), **family.settings(model)}
    if model.n_labels:
        spec.update(n_labels=model.n_labels, label_mode=model.label_mode)
    arrays = family.arrays(model)
    if members:
        arrays = {"weights": arrays["weights"]} if name == "mix" else arrays if name == "knn" else {}
        if name != "knn":
            spec["weights"] = [float(w) for w in (model.weights if name == "mix" else model.label_weights).tolist()]
        spec["members"] = []
        for i, member in enumerate(members):
            member_spec, member_arrays = describe(member)
            spec["members"].append(member_spec)
            arrays.update({f"members.{i}.{k}": v for k, v in member_arrays.items()})
    return spec, arrays


def onnx_problem(model: LanguageModel) -> str | None:
    """Why ONNX cannot carry this model (a mix: any of its members), or None."""
    name = model_name(model)
    if name == "mix":
        return next((p for p in map(onnx_problem, model.members) if p), None)
    return FAMILIES[name].onnx


__all__ = ["FAMILIES", "Family", "describe", "model_name", "onnx_problem"]
