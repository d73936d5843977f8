"""Everything `makemore train` does before the trainer runs: reading the data, cutting the splits, choosing the
settings. The CLI and the Python API call these same functions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from makemore import config as config_mod
from makemore.data.lines import parse_fractions, parse_items, read_items, read_text, split_items
from makemore.errors import MakemoreError
from makemore.models import MODELS
from makemore.training.trainer import TrainConfig


def model_train_defaults(model_name: str) -> TrainConfig:
    return config_mod.replace(TrainConfig(), **MODELS[model_name].train_defaults)


def load_splits(args: argparse.Namespace, seed: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    items, source = read_items(args.input, args.max_item_len)
    fractions = parse_fractions(args.split)
    info: dict[str, Any] = {
        "mode": "line",
        "source": source.name,
        "builtin": source.builtin,
        "sha256": source.sha256,
        "seed": seed,
    }
    if args.val_file or args.test_file:
        splits = {"train": items, "val": [], "test": []}
        for name in ("val", "test"):
            path = getattr(args, f"{name}_file")
            if path:
                splits[name] = parse_items(read_text(path), path, args.max_item_len)
                info[f"{name}_file"] = str(Path(path).resolve())
        if not args.val_file:  # cut val (and test, if no file) from --input with the fractions
            cut = split_items(items, fractions, seed)
            splits["train"], splits["val"] = cut["train"], cut["val"]
            if not args.test_file:
                splits["test"] = cut["test"]
    else:
        splits = split_items(items, fractions, seed)
        info["split"] = list(fractions)
    if not splits["train"]:
        raise MakemoreError(f"{args.input}: the training split is empty (too few items for --split {args.split})")
    info["sizes"] = {name: len(split) for name, split in splits.items()}
    return splits, info
