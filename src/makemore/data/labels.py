"""Labelled items: reading them (label<TAB>item lines, or one file per label), stratified splits, and the split
tensors of a labelled run.

A labelled item is encoded as  LABEL e m m a BOUNDARY, LABEL being the token id vocab.size + label: the models read
the label from the first input (models/labels.py), and every batch, evaluation and sampler of line mode carries it
without knowing it is there.
"""

from __future__ import annotations

import gzip
import importlib.resources
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from makemore.data.lines import BOUNDARY, SURROGATE, LineSplit, Vocab, encode_items, parse_items, read_text, split_items
from makemore.errors import MakemoreError

LABELLED_DATASETS = {
    "first-names-by-sex": "US Census 1990 first names labelled female / male (a name on both lists is under both)",
}
LABELS_SUFFIX = ".labels"  # RUN/train.labels.txt: the label of each line of RUN/train.txt


def is_labelled_dataset(name: str) -> bool:
    return name in LABELLED_DATASETS and not Path(name).exists()


def labelled_dataset_text(name: str) -> str:
    resource = importlib.resources.files("makemore") / "datasets" / f"{name}.tsv.gz"
    return gzip.decompress(resource.read_bytes()).decode("utf-8")


def parse_labelled(text: str, source: str, max_item_len: int) -> tuple[list[str], list[str]]:
    """label<TAB>item lines -> (items, labels). Blank lines are skipped; a line without a tab, an empty label or
    item, and a label with a single item are one-line errors naming the line."""
    items: list[str] = []
    labels: list[str] = []
    first_line: dict[str, int] = {}
    surrogates = SURROGATE.search(text) is not None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise MakemoreError(f"{source}: line {number} has no tab; --labelled expects LABEL<TAB>ITEM lines")
        label, item = (part.strip() for part in line.split("\t", 1))
        if not label:
            raise MakemoreError(f"{source}: line {number} has an empty label")
        if not item:
            raise MakemoreError(f"{source}: line {number} has an empty item")
        if len(item) > max_item_len:
            raise MakemoreError(
                f"{source}: line {number} is {len(item)} characters long, over --max-item-len {max_item_len}"
            )
        if surrogates and (SURROGATE.search(item) or SURROGATE.search(label)):
            raise MakemoreError(f"{source}: line {number} contains a lone surrogate")
        first_line.setdefault(label, number)
        items.append(item)
        labels.append(label)
    if not items:
        raise MakemoreError(f"{source}: no items (the file is empty or only blank lines)")
    check_label_sizes(labels, source, first_line)
    return items, labels


def check_label_sizes(labels: list[str], source: str, first_line: dict[str, int]) -> None:
    counts = Counter(labels)
    for label, count in counts.items():
        if count < 2:
            raise MakemoreError(
                f"{source}: line {first_line[label]}: label {label!r} has only one item (a label needs at least 2)"
            )


def read_labelled(inputs: list[str], max_item_len: int) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """Items and their labels from one label<TAB>item file (or the built-in labelled dataset), or from several
    files whose stems are their labels. Also each source's name and whether it is built in."""
    if len(inputs) == 1:
        name = inputs[0]
        if is_labelled_dataset(name):
            return (*parse_labelled(labelled_dataset_text(name), name, max_item_len), [{"name": name, "builtin": "1"}])
        items, labels = parse_labelled(read_text(name), name, max_item_len)
        return items, labels, [{"name": str(Path(name).resolve()), "builtin": ""}]
    items, labels, sources = [], [], []
    stems: dict[str, str] = {}
    for path in inputs:
        label = Path(path).stem
        if label in stems:
            raise MakemoreError(f"{path}: its label {label!r} (the file's stem) is also {stems[label]}'s")
        stems[label] = path
        found = parse_items(read_text(path), path, max_item_len)
        if len(found) < 2:
            raise MakemoreError(f"{path}: line 1: label {label!r} has only one item (a label needs at least 2)")
        items += found
        labels += [label] * len(found)
        sources.append({"name": str(Path(path).resolve()), "builtin": ""})
    return items, labels, sources


def stratified_split(
    items: list[str], labels: list[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, tuple[list[str], list[str]]]:
    """Each label's items cut with the fractions (the same seeded shuffle as unlabelled splits), then the labels'
    parts put together and shuffled: every split holds each label in about the proportion of the data."""
    parts: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label in sorted(set(labels)):
        cut = split_items([item for item, lab in zip(items, labels) if lab == label], fractions, seed)
        for name, chosen in cut.items():
            parts[name][0].extend(chosen)
            parts[name][1].extend([label] * len(chosen))
    rng = random.Random(seed)
    for name, (split_items_, split_labels) in parts.items():
        order = list(range(len(split_items_)))
        rng.shuffle(order)
        parts[name] = ([split_items_[i] for i in order], [split_labels[i] for i in order])
    return parts


def label_counts(labels: list[str], names: list[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(name, 0) for name in names}


def describe_counts(counts: dict[str, dict[str, int]], names: list[str]) -> str:
    """'female 3092/386/387, male 773/97/97 (train/val/test)'."""
    splits = [split for split in ("train", "val", "test") if split in counts]
    per_label = ", ".join(f"{name} " + "/".join(str(counts[s].get(name, 0)) for s in splits) for name in names)
    return f"{per_label} ({'/'.join(splits)})"


class LabelledSplit(LineSplit):
    """A LineSplit whose items start with their label token instead of the boundary:  L0 e m m a B L1 a v a B ...
    (each item has its own start slot, so an item's end is never the next item's label). `labels` (N,) holds each
    item's label index; `rows`, `eval_batches` and the samplers work unchanged."""

    def __init__(self, items: list[str], labels: list[int], vocab: Vocab):
        self.items = items
        n = len(items)
        self.labels = torch.tensor(labels, dtype=torch.long)
        chars = np.fromiter(map(len, items), dtype=np.int64, count=n)
        lengths = chars + 1  # predicted tokens: every character and the closing boundary
        self.lengths = torch.from_numpy(lengths)
        slots = chars + 2  # label, characters, boundary
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(slots)])[:n].astype(np.int64))
        ids = encode_items(vocab, items)  # (total characters,)
        # character k of the whole text belongs to item i and sits at k + 2 i + 1 (after i items' two extra slots)
        where = torch.arange(len(ids)) + torch.from_numpy(2 * np.repeat(np.arange(n), chars)) + 1
        self.stream = torch.full((len(ids) + 2 * n + 1,), BOUNDARY, dtype=torch.int32)
        self.stream[where] = ids
        self.stream[self.offsets] = (vocab.size + self.labels).to(torch.int32)
