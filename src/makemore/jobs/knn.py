"""Give a trained network a memory of its training data (models/knn.py), as a new run.

    OUT/run.json             model "knn": the memory's settings, chosen on val
    OUT/members/0/run.json   the network's structure
    OUT/model.safetensors    the network's weights and the memory (keys in float16, sparse next-character counts)
    OUT/{train,val,test}.txt the network's split

`build_knn` is what `makemore knn` and `--model auto` call: KNNLM.fit reads the states in eval mode (no dropout) at
every training position, keeps their principal axes and each distinct state once, and chooses the neighbours'
temperature and weight on val (lam 0 among them: a memory that does not help is switched off, and said so).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from makemore.data.lines import LineSplit
from makemore.errors import MakemoreError
from makemore.jobs.mix import SPLITS, copy_member_spec, prepare_out
from makemore.models.knn import KNNLM, KNNConfig, choose_settings
from makemore.models.knn_search import MAX_KEYS, MAX_POSITIONS, PROBES
from makemore.models.rnn import Recurrent
from makemore.runs import checkpoint as ckpt


def build_knn(
    run: str | Path,
    out: str | Path,
    force: bool = False,
    dim: int = 64,
    k: int = 64,
    cells: int | None = None,
    probes: int = PROBES,
) -> dict[str, Any]:
    """Build the knn run of `run` (a trained line-mode rnn, gru or lstm) in `out`. `cells`: how many cells the keys
    are grouped in for approximate search (None: by their number, models/knn_search.py; 0: exact search), of which
    the `probes` nearest to a query are searched. Returns
    {"out", "n_keys", "cells", "positions", "tokens", "temperature", "lam", "val_nll", "net_val_nll"}. Raises
    MakemoreError for runs it cannot use."""
    run, out = Path(run), Path(out)
    spec, net = ckpt.load_model(run, torch.device("cpu"))
    _check_base(run, spec, net)
    splits = {name: ckpt.read_split_items(run, name) for name in SPLITS}
    if not splits["val"]:
        raise MakemoreError(f"{run}: no val split to choose the memory's settings on")
    try:
        model = KNNLM(KNNConfig(dim=dim, k=k, probes=probes), spec.vocab.size, [net])
    except ValueError as error:
        raise MakemoreError(f"{run}: {error}") from None
    train, val = LineSplit(splits["train"], spec.vocab), LineSplit(splits["val"], spec.vocab)
    if cells is not None and cells < 0:
        raise MakemoreError(f"--cells must be >= 0, got {cells}")
    if train.tokens > MAX_POSITIONS:
        raise MakemoreError(f"{run}: {train.tokens:,} training positions; a memory reads at most {MAX_POSITIONS:,}")
    model.fit(train, None, cells)
    if model.config.n_keys > MAX_KEYS:
        raise MakemoreError(
            f"{run}: {model.config.n_keys:,} distinct states is more than a memory holds (at most {MAX_KEYS:,})"
        )
    chosen = choose_settings(model, val)
    model.config.temperature, model.config.lam = chosen.pop("chosen")
    _write(out, run, spec, model, splits, chosen, force)
    config = model.config
    return {"out": str(out), "n_keys": config.n_keys, "cells": config.cells, "positions": train.tokens,
            "temperature": config.temperature, "lam": config.lam, **chosen}  # fmt: skip


def _check_base(run: Path, spec: ckpt.RunSpec, net: Any) -> None:
    if spec.data.get("mode") == "stream":
        raise MakemoreError(f"{run}: a memory is built for line-mode runs (one item per line), not stream runs")
    if spec.data.get("labels"):
        raise MakemoreError(f"{run}: a memory of a labelled run is not supported")
    if not isinstance(net, Recurrent):
        raise MakemoreError(f"{run}: a memory is built for rnn, gru and lstm runs, not {spec.model_name}")


def _write(out: Path, run: Path, spec: ckpt.RunSpec, model: KNNLM, splits: dict, chosen: dict, force: bool) -> None:
    prepare_out(out, [run], force)
    copy_member_spec(run, out, 0)
    ckpt.save_tensors(out / ckpt.WEIGHTS_FILE, model.state_dict())
    ckpt.write_split_items(out, splits)
    data = {key: value for key, value in spec.data.items() if key not in ("fitted", "auto", "mix")}
    data["knn"] = {
        "member": str(run.resolve()),
        "net_val_nll": chosen["net_val_nll"],
        "val_nll": chosen["val_nll"],  # what `makemore info` shows as the run's val loss (it logs no metrics)
        "bits_saved_per_token": (chosen["net_val_nll"] - chosen["val_nll"]) / math.log(2),
    }
    knn_spec = ckpt.RunSpec("knn", model.config, {}, spec.vocab, data)
    ckpt.write_json(out / ckpt.RUN_FILE, knn_spec.to_json())  # last: a run.json means a complete run


__all__ = ["build_knn"]
