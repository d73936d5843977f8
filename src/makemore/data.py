"""Text in, integer tensors out: reading items, the vocabulary, splits, and batches (line mode).

An item "emma" is encoded as  BOUNDARY e m m a BOUNDARY.  Inputs are all but the last token, targets all but the
first, so a model predicts every character and the closing boundary (5 predicted tokens for "emma").
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MakemoreError

BOUNDARY = 0  # token id of the item boundary; not a character, so "." and " " stay ordinary characters
IGNORE = -1  # target id of padding positions

BUILTIN_DATASETS = {
    "first-names": "US Census 1990 first names (female and male), lower-cased, unique",
    "surnames": "US Census 1990 surnames, lower-cased, unique",
}
DEFAULT_DATASET = "first-names"


class Vocab:
    """Characters <-> token ids. Id 0 is the boundary token; characters get ids 1..len(chars) in sorted order."""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> Vocab:
        return cls(sorted(set().union(*map(set, texts)) if texts else set()))

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.stoi})

    def check(self, text: str, what: str = "text") -> None:
        missing = self.unknown(text)
        if missing:
            shown = " ".join(repr(c) for c in missing[:10])
            raise MakemoreError(f"{what} {text[:40]!r} has characters not in the model's vocabulary: {shown}")

    def encode(self, text: str) -> list[int]:
        self.check(text)
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != BOUNDARY)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars


# ---------------------------------------------------------------------------------------------------------------- read


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file (BOM allowed), with clear errors for missing, binary and non-UTF-8 files."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MakemoreError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MakemoreError(f"{path}: is a directory, expected a text file") from None
    except OSError as error:
        raise MakemoreError(f"{path}: cannot read ({error.strerror})") from None
    if b"\x00" in raw:
        raise MakemoreError(f"{path}: looks binary (contains NUL bytes), expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise MakemoreError(f"{path}: not valid UTF-8 (line {line}, byte offset {error.start})") from None


def parse_items(text: str, source: str, max_item_len: int) -> list[str]:
    """One item per line: surrounding whitespace stripped, blank lines dropped, duplicates kept."""
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if len(item) > max_item_len:
            raise MakemoreError(
                f"{source}: line {number} is {len(item)} characters long, over --max-item-len {max_item_len}"
            )
        if item:
            if any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                raise MakemoreError(f"{source}: line {number} contains a lone surrogate")
            items.append(item)
    if not items:
        raise MakemoreError(f"{source}: no items (the file is empty or only blank lines)")
    return items


def builtin_text(name: str) -> str:
    resource = importlib.resources.files("makemore") / "datasets" / f"{name}.txt.gz"
    return gzip.decompress(resource.read_bytes()).decode("utf-8")


@dataclass
class Source:
    """Where items came from: a built-in dataset name or a file, with its sha256 for provenance."""

    name: str
    sha256: str
    builtin: bool


def read_items(name_or_path: str, max_item_len: int = 256) -> tuple[list[str], Source]:
    if name_or_path in BUILTIN_DATASETS and not Path(name_or_path).exists():
        text = builtin_text(name_or_path)
        builtin = True
        name = name_or_path
    else:
        text = read_text(name_or_path)
        builtin = False
        name = str(Path(name_or_path).resolve())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return parse_items(text, name_or_path, max_item_len), Source(name, digest, builtin)


def split_items(items: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Seeded shuffle, then cut into train/val/test (the lectures' recipe: random.seed(seed); random.shuffle)."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n_train = int(round(fractions[0] * len(shuffled)))
    n_val = int(round(fractions[1] * len(shuffled)))
    if fractions[2] == 0:
        n_val = len(shuffled) - n_train
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise MakemoreError(f"--split expects three fractions like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) == 2:
        parts.append(0.0)
    if len(parts) != 3 or any(p < 0 for p in parts) or parts[0] <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise MakemoreError(f"--split expects train,val,test fractions that are >= 0 and sum to 1, got {text!r}")
    return parts[0], parts[1], parts[2]


# ------------------------------------------------------------------------------------------------------------ tensors


class LineSplit:
    """One split, pre-tensorised once: padded inputs/targets (N, L) and per-item predicted-token counts (N,)."""

    def __init__(self, items: list[str], vocab: Vocab):
        self.items = items
        n = len(items)
        lengths = [len(item) + 1 for item in items]  # predicted tokens: every character and the closing boundary
        width = max(lengths, default=1)
        self.inputs = torch.full((n, width), BOUNDARY, dtype=torch.long)
        self.targets = torch.full((n, width), IGNORE, dtype=torch.long)
        for row, item in enumerate(items):
            ids = vocab.encode(item)
            self.inputs[row, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
            self.targets[row, : len(ids) + 1] = torch.tensor(ids + [BOUNDARY], dtype=torch.long)
        self.lengths = torch.tensor(lengths, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index`, trimmed to the longest of them: padding costs only up to the batch's own maximum."""
        width = int(self.lengths[index].max())
        return self.inputs[index, :width], self.targets[index, :width]

    def eval_batches(self, batch_size: int):
        """Every item once, in batches of similar length (sorted), for exact full-split evaluation."""
        order = torch.argsort(self.lengths, stable=True)
        for start in range(0, len(order), batch_size):
            yield self.rows(order[start : start + batch_size])


class LengthBucketSampler:
    """Random training batches with little padding.

    Draws a pool of `pool_batches` random batches' worth of items, sorts the pool by length, cuts it into batches
    and serves those in random order. Every item is still drawn uniformly at random; only the grouping changes.
    The state is (generator state at the start of the pool, position in the pool), so resume is exact.
    """

    def __init__(self, split: LineSplit, batch_size: int, seed: int, pool_batches: int = 64, bucket: bool = True):
        self.split = split
        self.batch_size = batch_size
        self.pool_batches = pool_batches if bucket else 1
        self.generator = torch.Generator().manual_seed(seed)
        self.pool_state = self.generator.get_state()
        self.position = 0
        self._fill()

    def _fill(self) -> None:
        self.pool_state = self.generator.get_state()
        n_items = self.batch_size * self.pool_batches
        pool = torch.randint(len(self.split), (n_items,), generator=self.generator)
        pool = pool[torch.argsort(self.split.lengths[pool], stable=True)]
        batches = pool.view(self.pool_batches, self.batch_size)
        self.batches = batches[torch.randperm(self.pool_batches, generator=self.generator)]
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position == self.pool_batches:
            self._fill()
        index = self.batches[self.position]
        self.position += 1
        return self.split.rows(index)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pool_state": self.pool_state.clone(), "position": torch.tensor(self.position)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["pool_state"])
        self._fill()
        self.position = int(state["position"])
