"""Text in, integer tensors out: reading items, the vocabulary, splits, and batches (line mode).

An item "emma" is encoded as  BOUNDARY e m m a BOUNDARY.  Inputs are all but the last token, targets all but the
first, so a model predicts every character and the closing boundary (5 predicted tokens for "emma").
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from makemore.errors import MakemoreError

BOUNDARY = 0  # token id of the item boundary; not a character, so "." and " " stay ordinary characters
IGNORE = -1  # target id of padding positions
SURROGATE = re.compile("[\ud800-\udfff]")  # UTF-16 halves: never text on their own, can't be written as UTF-8

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
        return cls(sorted(set("".join(texts))))

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


def open_binary(path: str | Path):
    """open(path, "rb") with one-line errors for missing, directory and unreadable paths."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise MakemoreError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MakemoreError(f"{path}: is a directory, expected a text file") from None
    except OSError as error:
        raise MakemoreError(f"{path}: cannot read ({error.strerror})") from None


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file (BOM allowed), with clear errors for missing, binary and non-UTF-8 files."""
    path = Path(path)
    with open_binary(path) as handle:
        raw = handle.read()
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
    surrogates = SURROGATE.search(text) is not None  # one scan of the whole text, not one per line
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if len(item) > max_item_len:
            raise MakemoreError(
                f"{source}: line {number} is {len(item)} characters long, over --max-item-len {max_item_len}"
            )
        if item:
            if surrogates and SURROGATE.search(item):
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
    if len(parts) != 3 or not all(0 <= p <= 1 for p in parts) or parts[0] <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise MakemoreError(f"--split expects train,val,test fractions that are >= 0 and sum to 1, got {text!r}")
    return parts[0], parts[1], parts[2]


# ------------------------------------------------------------------------------------------------------------ tensors


def encode_items(vocab: Vocab, items: list[str]) -> torch.Tensor:
    """The token ids of all items' characters, concatenated (int32), in a few array operations instead of a Python
    loop per character: a million lines take about a second, not a minute."""
    text = "".join(items)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")  # one code point each
    chars = np.array([ord(c) for c in vocab.chars], dtype=np.uint32)
    order = np.argsort(chars, kind="stable")
    pos = np.searchsorted(chars[order], points).clip(max=max(len(chars) - 1, 0))
    found = chars[order][pos] == points if len(chars) else np.zeros(len(points), dtype=bool)
    if not found.all():  # report the first offending item the usual way
        first = int(np.argmin(found))
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        vocab.check(items[int(np.searchsorted(np.cumsum(lengths), first, side="right"))], "item")
    return torch.from_numpy((order[pos] + 1).astype(np.int32))


class LineSplit:
    """One split, tensorised once, in memory proportional to its characters (not items x longest item).

    All items live in one token stream  BOUNDARY e m m a BOUNDARY a v a BOUNDARY ...  (int32); item i starts at
    offsets[i] and has lengths[i] predicted tokens (its characters and the closing boundary). `rows` cuts padded
    (B, L) inputs/targets for any batch out of it, L being the batch's own longest item.
    """

    def __init__(self, items: list[str], vocab: Vocab):
        self.items = items
        n = len(items)
        chars = np.fromiter(map(len, items), dtype=np.int64, count=n)
        lengths = chars + 1  # predicted tokens: every character and the closing boundary
        self.lengths = torch.from_numpy(lengths)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        ids = encode_items(vocab, items)  # (total characters,)
        # character k of the whole text belongs to item i and sits at k + i + 1 (after i + 1 boundaries)
        where = torch.arange(len(ids)) + torch.from_numpy(np.repeat(np.arange(n), chars)) + 1
        self.stream = torch.full((len(ids) + n + 1,), BOUNDARY, dtype=torch.int32)
        self.stream[where] = ids

    def __len__(self) -> int:
        return len(self.items)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` as padded inputs and targets (B, L), L the longest of them: padding costs only up to the
        batch's own maximum."""
        lengths = self.lengths[index]  # (B,)
        cols = torch.arange(int(lengths.max()))  # (L,)
        real = cols[None, :] < lengths[:, None]  # (B, L)
        pos = (self.offsets[index][:, None] + cols[None, :]).clamp(max=len(self.stream) - 2)  # (B, L)
        inputs = torch.where(real, self.stream[pos].long(), BOUNDARY)
        targets = torch.where(real, self.stream[pos + 1].long(), IGNORE)
        return inputs, targets

    @property
    def inputs(self) -> torch.Tensor:
        """All items as one padded (N, L) input matrix (built on demand: it costs N x longest item)."""
        return self.rows(torch.arange(len(self)))[0] if len(self) else torch.zeros(0, 1, dtype=torch.long)

    @property
    def targets(self) -> torch.Tensor:
        return self.rows(torch.arange(len(self)))[1] if len(self) else torch.zeros(0, 1, dtype=torch.long)

    def eval_batches(self, batch_size: int):
        """Every item once, in batches of similar length (sorted), for exact full-split evaluation."""
        order = torch.argsort(self.lengths, stable=True)
        for start in range(0, len(order), batch_size):
            yield self.rows(order[start : start + batch_size])
