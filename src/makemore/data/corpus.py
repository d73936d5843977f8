"""Reading continuous text: deciding line or stream mode, encoding a file of any size into a compact id array
(memory-mapped when large), cutting it into splits by offsets, and re-opening it (checked by sha256) for a run."""

from __future__ import annotations

import codecs
import hashlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from makemore.data.lines import BOUNDARY, Vocab, open_binary
from makemore.errors import MakemoreError

CHUNK_BYTES = 1 << 22  # read and encode 4 MiB at a time: temporaries stay small next to the corpus itself


DETECT_BYTES = 1 << 20  # mode detection looks at the first 1 MiB


MODES = ("auto", "line", "stream")


def detect_mode(path: str | Path, max_item_len: int = 256) -> tuple[str, str]:
    """("line" | "stream", why) from the first MiB of a text file.

    A list of items has short lines of one or two words and no blank lines; running text has paragraphs (blank
    lines), long lines, or many words per line.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(DETECT_BYTES)
            truncated = bool(handle.read(1))
    except OSError:
        return "line", "the file cannot be read (line mode reports why)"
    text = raw.decode("utf-8", errors="ignore").lstrip("\ufeff")
    lines = text.splitlines()
    if truncated and lines:
        lines = lines[:-1]  # the last line of a cut sample is partial
    items = [line.strip() for line in lines if line.strip()]
    if not items:
        return "line", "no text lines"
    longest = max(len(item) for item in items)
    blank = 1 - len(items) / len(lines)
    words = statistics.fmean(len(item.split()) for item in items)
    median = statistics.median(len(item) for item in items)
    shape = f"{len(items)} lines, median {median:g} chars, {words:.1f} words per line, {blank:.0%} blank"
    if longest > max_item_len:
        return "stream", f"a line of {longest} chars, longer than any item (--max-item-len {max_item_len})"
    if len(lines) >= 20 and blank >= 0.05:
        return "stream", f"running text: paragraphs separated by blank lines ({shape})"
    if words >= 3:
        return "stream", f"running text: lines of several words ({shape})"
    return "line", f"a list of items ({shape})"


@dataclass
class Corpus:
    """A text file as ids (n + 1,): ids[0] = BOUNDARY, then one id per character; plus its provenance."""

    ids: np.ndarray
    vocab: Vocab
    path: str
    sha256: str  # of the file's bytes

    @property
    def n_chars(self) -> int:
        return len(self.ids) - 1


def _decoded_chunks(path: Path) -> Iterator[tuple[bytes, str]]:
    """(raw bytes, decoded text) chunk by chunk; a BOM is dropped; binary and invalid UTF-8 fail clearly."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = 0
    with open_binary(path) as handle:
        while True:
            raw = handle.read(CHUNK_BYTES)
            if b"\x00" in raw:
                raise MakemoreError(f"{path}: looks binary (contains NUL bytes), expected UTF-8 text")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                raise MakemoreError(f"{path}: not valid UTF-8 (near byte offset {offset + error.start})") from None
            yield raw, text
            offset += len(raw)
            if not raw:
                return


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def _allocate(n: int, dtype: np.dtype, memmap_above: int | None, cache_dir: str | Path | None) -> np.ndarray:
    """An array in RAM, or memory-mapped on an unlinked temporary file when it would take over `memmap_above` bytes
    (default: half the free memory), so the OS pages it in and out instead of the process holding it."""
    nbytes = n * np.dtype(dtype).itemsize
    limit = _available_memory() // 2 if memmap_above is None else memmap_above
    if nbytes <= limit:
        return np.empty(n, dtype=dtype)
    with tempfile.TemporaryFile(dir=cache_dir, prefix=".makemore-stream-") as handle:
        handle.truncate(max(nbytes, 1))
        return np.memmap(handle, dtype=dtype, mode="r+", shape=(n,))  # the mapping outlives the closed handle


def _encode_chunk(text: str, codepoints: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Characters -> ids 1..V-1 (the vocabulary is sorted by code point, so an id is 1 + rank of the code point)."""
    if codepoints[-1] < 256:  # one byte per character: a 256-entry lookup table
        table = np.zeros(256, dtype=dtype)
        table[codepoints] = np.arange(1, len(codepoints) + 1, dtype=dtype)
        return table[np.frombuffer(text.encode("latin-1"), dtype=np.uint8)]
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return (np.searchsorted(codepoints, codes) + 1).astype(dtype)


def read_corpus(
    path: str | Path,
    vocab: Vocab | None = None,
    sha256: str | None = None,
    memmap_above: int | None = None,
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Encode a UTF-8 text file in two streaming passes (count and collect characters; encode into a preallocated
    array), so the peak memory is the id array plus a few MiB, whatever the file size.

    vocab: encode with this vocabulary (unknown characters are an error) instead of the file's own.
    sha256: the file must still have these bytes (a stream run re-reads its corpus instead of copying it).
    """
    path = Path(path)
    digest, n_chars, seen = hashlib.sha256(), 0, set()
    for raw, text in _decoded_chunks(path):
        digest.update(raw)
        n_chars += len(text)
        seen.update(text)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise MakemoreError(
            f"{path}: the file changed since the run was made (sha256 {digest.hexdigest()[:12]}..., the run "
            f"recorded {sha256[:12]}...); a stream-mode run re-reads its text file: restore it or train a new run"
        )
    if n_chars == 0:
        raise MakemoreError(f"{path}: empty, no text to train or evaluate on")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in seen):
        raise MakemoreError(f"{path}: contains a lone surrogate")
    if vocab is None:
        vocab = Vocab(sorted(seen))
    else:
        unknown = sorted(seen - set(vocab.chars))
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:10])
            raise MakemoreError(f"{path}: has characters not in the model's vocabulary: {shown}")
    dtype = np.dtype(np.uint8 if vocab.size <= 256 else np.uint16 if vocab.size <= 1 << 16 else np.uint32)
    codepoints = np.array(sorted(ord(c) for c in vocab.chars), dtype=np.uint32)
    if [chr(c) for c in codepoints] != vocab.chars:
        raise MakemoreError("the vocabulary is not sorted by code point; cannot encode a stream with it")
    ids = _allocate(n_chars + 1, dtype, memmap_above, cache_dir)
    ids[0] = BOUNDARY
    position, second = 1, hashlib.sha256()
    for raw, text in _decoded_chunks(path):
        second.update(raw)
        if position + len(text) > len(ids):
            break
        ids[position : position + len(text)] = _encode_chunk(text, codepoints, dtype)
        position += len(text)
    if position != len(ids) or second.hexdigest() != digest.hexdigest():
        raise MakemoreError(f"{path}: the file changed while it was being read")
    return Corpus(ids, vocab, str(path.resolve()), digest.hexdigest())


def split_offsets(n_chars: int, fractions: tuple[float, float, float], dev: float = 0.0) -> dict[str, list[int]]:
    """Contiguous target ranges [begin, end): train, then test, then val at the end (nanoGPT: val = the last 10%).

    dev > 0 carves that fraction of the text off the *start* of train, for held-out choices made while fitting (e.g.
    an n-gram's discounts), so that val stays untouched until evaluation. The start, because the text just before
    val is the most like it (on Tiny Shakespeare: the same play, the same speakers), so taking that away from the
    counts would cost the most.
    """
    train_f, _, test_f = fractions
    n_train, n_test = int(n_chars * train_f), int(n_chars * test_f)
    n_dev = int(n_chars * dev)
    cuts = {"dev": (1, 1 + n_dev)} if n_dev else {}
    cuts["train"] = (1 + n_dev, 1 + n_train)
    cuts["test"] = (1 + n_train, 1 + n_train + n_test)
    cuts["val"] = (1 + n_train + n_test, 1 + n_chars)
    return {name: [begin, end] for name, (begin, end) in cuts.items()}


def open_stream_corpus(data: dict[str, Any], vocab: Vocab, where: str) -> Corpus:
    """Re-read a stream run's corpus from the path in its run.json, checking it is byte for byte the same file."""
    path, sha256 = data.get("source"), data.get("sha256")
    if not isinstance(path, str) or not isinstance(sha256, str):
        raise MakemoreError(f"{where}: a stream-mode run needs data.source and data.sha256")
    if not Path(path).exists():
        raise MakemoreError(f"{where}: the run's text file {path} is gone; a stream-mode run re-reads it")
    return read_corpus(path, vocab=vocab, sha256=sha256)
