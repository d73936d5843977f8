"""The data of a labelled run (`makemore train --labelled`): items with their labels, cut into stratified splits,
and what run.json records about them (the label names in index order, per-split counts); read back on resume."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from makemore.data.labels import (
    LABELS_SUFFIX,
    LabelledSplit,
    label_counts,
    parse_labelled,
    read_labelled,
    stratified_split,
)
from makemore.data.lines import Vocab, parse_fractions, read_text
from makemore.errors import MakemoreError
from makemore.models.labels import check_mode
from makemore.runs import checkpoint as ckpt

LINE_SPLIT = "0.8,0.1,0.1"


def load_labelled_data(
    options: Any, seed: int
) -> tuple[dict[str, Any], Vocab, dict[str, list[str]], dict[str, list[str]]]:
    """(run.json's data info, vocabulary, items per split, labels per split) of a new labelled run."""
    if options.mode == "stream" or options.seq_len is not None or options.stateful or options.dev_fraction:
        raise MakemoreError("--labelled is for line mode (one item per line); stream-mode flags do not apply")
    inputs = options.inputs or [options.input]
    items, labels, sources = read_labelled(inputs, options.max_item_len)
    options.split = options.split or LINE_SPLIT
    fractions = parse_fractions(options.split)
    digest = hashlib.sha256()
    for label, item in zip(labels, items):
        digest.update(f"{label}\t{item}\n".encode())
    info: dict[str, Any] = {
        "mode": "line",
        "mode_reason": "--labelled",
        "source": ", ".join(source["name"] for source in sources),
        "builtin": all(source["builtin"] for source in sources),
        "sha256": digest.hexdigest(),
        "seed": seed,
    }
    if options.val_file or options.test_file:
        splits = {"train": (items, labels), "val": ([], []), "test": ([], [])}
        for name in ("val", "test"):
            path = getattr(options, f"{name}_file")
            if path:
                splits[name] = parse_labelled(read_text(path), path, options.max_item_len)
                info[f"{name}_file"] = str(Path(path).resolve())
        if not options.val_file:
            cut = stratified_split(items, labels, fractions, seed)
            splits["train"], splits["val"] = cut["train"], cut["val"]
            if not options.test_file:
                splits["test"] = cut["test"]
    else:
        splits = stratified_split(items, labels, fractions, seed)
        info["split"] = list(fractions)
    names = sorted(set(splits["train"][1]))
    for name in ("val", "test"):
        unknown = sorted(set(splits[name][1]) - set(names))
        if unknown:
            raise MakemoreError(f"{name} split: label {unknown[0]!r} has no items in train")
    where = f"{', '.join(inputs)} ({len(items)} items, --split {options.split})"
    if not splits["train"][0]:
        raise MakemoreError(f"{where}: the train split is empty; give more lines or a larger train fraction")
    if not splits["val"][0]:
        raise MakemoreError(f"{where}: the val split is empty; give more lines, a val fraction, or --val-file")
    info["labels"] = names
    if options.label_mode is not None:
        check_mode("--label-mode", options.label_mode)
    info["label_mode"] = options.label_mode  # None: the model family's default (set when the model is built)
    info["label_counts"] = {name: label_counts(split[1], names) for name, split in splits.items()}
    info["sizes"] = {name: len(split[0]) for name, split in splits.items()}
    vocab = Vocab.from_texts([item for split in splits.values() for item in split[0]])
    return (
        info,
        vocab,
        {name: split[0] for name, split in splits.items()},
        {name: split[1] for name, split in splits.items()},
    )


def read_run_labels(run_dir: Path, spec: Any, items: dict[str, list[str]]) -> dict[str, list[str]]:
    """The labels of a labelled run's split files (RUN/train.labels.txt ...), checked against run.json."""
    labels = {}
    for name, split in items.items():
        found = ckpt.read_split_items(run_dir, name + LABELS_SUFFIX)
        if len(found) != len(split) or not set(found) <= set(spec.data["labels"]):
            raise MakemoreError(f"{run_dir}: {name}{LABELS_SUFFIX}.txt does not match {name}.txt; the run is corrupt")
        labels[name] = found
    return labels


def write_run_labels(work: Path, labels: dict[str, list[str]]) -> None:
    if labels:
        ckpt.write_split_items(work, {name + LABELS_SUFFIX: split for name, split in labels.items()})


def labelled_val(specs: list[Any], first_run: Path, splits: dict[str, list[str]], val_file: Any) -> Any:
    """A mix of labelled runs stays conditional: its val split read with its labels (a LabelledSplit), and the
    label files added to `splits` (written with the mix). None when the runs have no labels."""
    labels = specs[0].data.get("labels")
    if any(spec.data.get("labels") != labels for spec in specs[1:]):
        raise MakemoreError(f"{first_run}: mixed runs must all have the same labels, or none")
    if not labels:
        return None
    if val_file:
        raise MakemoreError("--val-file: not for labelled runs (the weights are fitted on their labelled val split)")
    for name in ("train", "val", "test"):
        splits[name + LABELS_SUFFIX] = ckpt.read_split_items(first_run, name + LABELS_SUFFIX)
    index = {label: k for k, label in enumerate(labels)}
    vocab = specs[0].vocab
    return LabelledSplit(splits["val"], [index[label] for label in splits["val" + LABELS_SUFFIX]], vocab)
