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
        position = int(state["position"])
        if not 0 <= position <= self.pool_batches:
            raise ValueError(f"sampler position {position} is outside 0..{self.pool_batches}")
        self.generator.set_state(state["pool_state"])
        self._fill()
        self.position = position


def pack_rows(lengths: list[int], width: int, budget: int = 50) -> tuple[list[int], list[int]]:
    """Bin packing: items of `lengths` (each 1..width) -> the (row, column) where each starts, every row holding at
    most `width` slots. Each row takes the longest item left, then the combination of remaining items that fills
    it best: a depth-first search over lengths, longest first, that stops at the first exact fill (or after
    `budget` tries, keeping the best so far). Items are interchangeable within a length, so only the counts per
    length are searched. Names (`lengths` 3..16): rows of 16 come out 93.5% full (best fit decreasing: 92.7%; two
    items of 7 leave 2 slots nothing fills), rows of 32 99.8%."""
    by_length: list[list[int]] = [[] for _ in range(width + 1)]
    for item, length in enumerate(lengths):
        by_length[length].append(item)
    counts = [len(items) for items in by_length]
    rows, cols = [0] * len(lengths), [0] * len(lengths)
    longest, row = width, 0
    fills: dict[tuple[int, ...], list[int]] = {}  # the search's answer depends only on what of each length is left
    while True:
        while longest > 0 and not counts[longest]:
            longest -= 1
        if longest == 0:
            return rows, cols
        counts[longest] -= 1
        free = width - longest
        key = (free, *(min(counts[n], free // n) for n in range(1, free + 1)))
        if key not in fills:
            fills[key] = _best_fill(counts, free, budget)
        col = 0
        for index, length in enumerate([longest, *fills[key]]):
            counts[length] -= index > 0  # (the longest was taken above)
            item = by_length[length].pop()
            rows[item], cols[item] = row, col
            col += length
        row += 1


def _best_fill(counts: list[int], free: int, budget: int) -> list[int]:
    """Lengths (longest first) of available items (`counts` per length, left as it was) that fill `free` slots best."""
    best: list[int] = []
    picked: list[int] = []
    tries = 0

    def search(free: int, top: int) -> bool:
        nonlocal best, tries
        if sum(picked) > sum(best):
            best = picked.copy()
        if free == 0:
            return True
        for length in range(min(free, top), 0, -1):
            if counts[length] and tries < budget:
                tries += 1
                counts[length] -= 1
                picked.append(length)
                done = search(free - length, length)
                picked.pop()
                counts[length] += 1
                if done:
                    return True
        return False

    search(free, free)
    return best


class PackedSampler:
    """Random training batches without padding, for models that read several items per row (`packable` models).

    Draws a pool of items uniformly at random (as LengthBucketSampler does), packs them into rows of `width`
    slots (at least the longest item's length), nearly all full (`pack_rows`), and serves the rows in random order,
    batches of batch_size x (longest item) slots: batch_size rows, or fewer rows where `width` is wider. A row
    reads  BOUNDARY e m m a BOUNDARY a v a ...; the model restarts at every boundary, so each item is read as if
    alone and the loss is the same as unpacked. Every drawn item is trained on once.
    State: (generator state at the start of the pool, rows served), so resume is exact.
    """

    def __init__(self, split: LineSplit, batch_size: int, seed: int, pool_batches: int = 64, width: int = 0):
        self.split = split
        longest = int(split.lengths.max())
        self.width = max(longest, width)
        # batch_size rows of the longest item's length: as many slots in fewer, wider rows
        self.batch_size = max(1, batch_size * longest // self.width)
        self.pool_items = max(1, round(batch_size * pool_batches * longest / float(split.lengths.double().mean())))
        self.generator = torch.Generator().manual_seed(seed)
        self._fill()

    def _fill(self) -> None:
        self.pool_state = self.generator.get_state()
        pool = torch.randint(len(self.split), (self.pool_items,), generator=self.generator)
        pool = pool[torch.argsort(self.split.lengths[pool], descending=True, stable=True)]
        lengths = self.split.lengths[pool]  # (n,)
        rows, cols = pack_rows(lengths.tolist(), self.width)
        # Token k of item i: input stream[offset_i + k], target stream[offset_i + k + 1], packed into slot
        # row_i * width + col_i + k of the flat (R * width) pool.
        item = torch.repeat_interleave(torch.arange(len(pool)), lengths)  # (tokens,)
        k = torch.arange(len(item)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        source = self.split.offsets[pool][item] + k
        slots = (torch.tensor(rows) * self.width + torch.tensor(cols))[item] + k
        n_rows = max(rows) + 1
        inputs = torch.full((n_rows * self.width,), BOUNDARY, dtype=torch.long)
        targets = torch.full((n_rows * self.width,), IGNORE, dtype=torch.long)
        inputs[slots], targets[slots] = self.split.stream[source].long(), self.split.stream[source + 1].long()
        order = torch.randperm(n_rows, generator=self.generator)
        self.inputs = inputs.view(n_rows, self.width)[order]
        self.targets = targets.view(n_rows, self.width)[order]
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= len(self.inputs):
            self._fill()
        rows = slice(self.position, self.position + self.batch_size)
        self.position += self.batch_size
        x, y = self.inputs[rows], self.targets[rows]
        width = int((y != IGNORE).any(0).nonzero().max()) + 1  # drop columns that are padding in every row
        return x[:, :width], y[:, :width]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pool_state": self.pool_state.clone(), "position": torch.tensor(self.position)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        position = int(state["position"])
        self.generator.set_state(state["pool_state"])
        self._fill()
        if not 0 <= position <= len(self.inputs):
            raise ValueError(f"sampler position {position} is outside 0..{len(self.inputs)}")
        self.position = position
