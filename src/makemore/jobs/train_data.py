"""The data of a training run: line mode (items, cut into train/val/test) or stream mode (one continuous text, the
splits recorded as offsets), chosen from the file unless asked; read back from the run directory on resume.

Every split a run trains and chooses on must hold something: an empty train or val split is a one-line error here,
before any work (a val split of nothing would give a best val loss of nan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from makemore.data.corpus import MODES, Corpus, detect_mode, open_stream_corpus, read_corpus, split_offsets
from makemore.data.labels import LabelledSplit, describe_counts, is_labelled_dataset
from makemore.data.lines import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    LineSplit,
    Vocab,
    parse_fractions,
    parse_items,
    read_items,
    read_text,
    split_items,
)
from makemore.data.stream import DEFAULT_WINDOW, stream_splits
from makemore.errors import MakemoreError
from makemore.jobs.train_labels import load_labelled_data, read_run_labels
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt

LINE_SPLIT = "0.8,0.1,0.1"
STREAM_SPLIT = "0.9,0.1,0"


@dataclass
class DataOptions:
    """Where the data comes from and how it is cut (the `train` arguments of that name)."""

    input: str = DEFAULT_DATASET
    val_file: str | None = None
    test_file: str | None = None
    split: str | None = None
    max_item_len: int = 256
    mode: str = "auto"
    seq_len: int | None = None
    stateful: bool = False
    dev_fraction: float = 0.0
    labelled: bool = False  # label<TAB>item lines, or one file per label (`inputs`); see data/labels.py
    inputs: list[str] | None = None  # several -i files (--labelled: each file's stem is its label)
    label_mode: str | None = None  # --label-mode (None: the model family's default)

    def check(self) -> None:
        if self.mode not in MODES:
            raise MakemoreError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.max_item_len, int) or self.max_item_len < 1:
            raise MakemoreError(f"--max-item-len must be >= 1, got {self.max_item_len!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 1):
            raise MakemoreError(f"--seq-len must be >= 1, got {self.seq_len!r}")


@dataclass
class Data:
    """A run's data: the items of each split (line mode) or the corpus (stream mode), the vocabulary, and what
    run.json records about it."""

    info: dict[str, Any]
    vocab: Vocab
    items: dict[str, list[str]] = field(default_factory=dict)  # line mode
    corpus: Corpus | None = None  # stream mode
    labels: dict[str, list[str]] = field(default_factory=dict)  # a labelled run: the label of each item

    @property
    def stream(self) -> bool:
        return self.info.get("mode") == "stream"

    def splits(self, model: LanguageModel, where: str) -> dict[str, Any]:
        """The splits as the trainer takes them (tensors of items, or windows of the text)."""
        if self.corpus is not None:
            return stream_splits(self.corpus, self.info, model, where=where)
        if self.labels:
            index = {label: i for i, label in enumerate(self.info["labels"])}
            return {
                name: LabelledSplit(items, [index[label] for label in self.labels[name]], self.vocab)
                for name, items in self.items.items()
            }
        return {name: LineSplit(items, self.vocab) for name, items in self.items.items()}


# ---------------------------------------------------------------------------------------------------- new runs


def load_data(options: DataOptions, model_config: Any, seed: int) -> Data:
    """Read and cut the data of a new run."""
    options.check()
    if options.labelled or options.inputs or is_labelled_dataset(options.input):
        info, vocab, items, labels = load_labelled_data(options, seed)
        return Data(info, vocab, items=items, labels=labels)
    if options.label_mode is not None:
        raise MakemoreError("--label-mode is for labelled data: add --labelled")
    mode, why = resolve_mode(options)
    if mode == "stream":
        corpus, info = load_stream(options, model_config, why)
        return Data(info, corpus.vocab, corpus=corpus)
    if options.seq_len is not None or options.stateful or options.dev_fraction:
        raise MakemoreError(f"--seq-len, --stateful and --dev-fraction are for stream mode (this is {why})")
    options.split = options.split or LINE_SPLIT
    items, info = load_splits(options, seed)
    info["mode_reason"] = why
    vocab = Vocab.from_texts([item for split in items.values() for item in split])
    return Data(info, vocab, items=items)


def resolve_mode(options: DataOptions) -> tuple[str, str]:
    """Line or stream mode, and why: --mode line/stream as given; --mode auto looks at the file."""
    builtin = options.input in BUILTIN_DATASETS and not Path(options.input).exists()
    if options.mode == "stream" and builtin:
        raise MakemoreError(f"--mode stream: {options.input} is a built-in list of names; give a text file with -i")
    if options.mode == "stream" and (options.val_file or options.test_file):
        raise MakemoreError("--mode stream cuts val and test from the text (--split); --val-file/--test-file: lines")
    if options.mode != "auto":
        return options.mode, f"--mode {options.mode}"
    if builtin:
        return "line", "a built-in list of names"
    if options.val_file or options.test_file:
        return "line", "--val-file/--test-file give lists of items"
    return detect_mode(options.input, options.max_item_len)


def load_splits(options: Any, seed: int, need_val: bool = True) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Line mode: the items of train, val and test (from --input cut by --split, or given files) and their
    provenance. `options` needs input, split, max_item_len, val_file and test_file. Train must hold items, and
    val too unless `need_val` is False (the lr finder sweeps on train alone)."""
    items, source = read_items(options.input, options.max_item_len)
    fractions = parse_fractions(options.split)
    info: dict[str, Any] = {
        "mode": "line",
        "source": source.name,
        "builtin": source.builtin,
        "sha256": source.sha256,
        "seed": seed,
    }
    if options.val_file or options.test_file:
        splits = {"train": items, "val": [], "test": []}
        for name in ("val", "test"):
            path = getattr(options, f"{name}_file")
            if path:
                splits[name] = parse_items(read_text(path), path, options.max_item_len)
                info[f"{name}_file"] = str(Path(path).resolve())
        if not options.val_file:  # cut val (and test, if no file) from --input with the fractions
            cut = split_items(items, fractions, seed)
            splits["train"], splits["val"] = cut["train"], cut["val"]
            if not options.test_file:
                splits["test"] = cut["test"]
    else:
        splits = split_items(items, fractions, seed)
        info["split"] = list(fractions)
    check_not_empty(splits, options, need_val)
    info["sizes"] = {name: len(split) for name, split in splits.items()}
    return splits, info


def check_not_empty(splits: dict[str, list[str]], options: Any, need_val: bool) -> None:
    where = f"{options.input} ({sum(map(len, splits.values()))} items, --split {options.split})"
    if not splits["train"]:
        raise MakemoreError(f"{where}: the train split is empty; give more lines or a larger train fraction")
    if splits["val"] or not need_val:
        return
    if not getattr(options, "val_file", None):
        raise MakemoreError(f"{where}: the val split is empty; give more lines, a val fraction, or --val-file")
    raise MakemoreError(f"{options.val_file}: the val file holds no items")


def load_stream(options: DataOptions, model_config: Any, why: str) -> tuple[Corpus, dict[str, Any]]:
    """Encode the text and record where the splits are: the run stores the path, sha256 and offsets, not a copy."""
    fractions = parse_fractions(options.split or STREAM_SPLIT)
    if not 0 <= options.dev_fraction < fractions[0]:
        raise MakemoreError(f"--dev-fraction must be >= 0 and below the train fraction {fractions[0]}")
    corpus = read_corpus(options.input)
    offsets = split_offsets(corpus.n_chars, fractions, options.dev_fraction)
    sizes = {name: end - begin for name, (begin, end) in offsets.items()}
    if sizes["val"] < 1 or sizes["train"] < 1:
        shown = options.split or STREAM_SPLIT
        raise MakemoreError(
            f"{options.input}: {corpus.n_chars} chars are too few for --split {shown} (an empty train or val split)"
        )
    block = getattr(model_config, "block_size", None)
    window = options.seq_len or block or DEFAULT_WINDOW
    origin = "--seq-len" if options.seq_len else "the model's --block-size" if block else "the default"
    info = {
        "mode": "stream",
        "mode_reason": why,
        "source": corpus.path,
        "builtin": False,
        "sha256": corpus.sha256,
        "chars": corpus.n_chars,
        "split": list(fractions),
        "dev_fraction": options.dev_fraction,
        "offsets": offsets,
        "sizes": sizes,
        "window": window,
        "window_origin": origin,
        "stateful": options.stateful,
    }
    return corpus, info


# ------------------------------------------------------------------------------------------------------ resume


def reload_data(run_dir: Path, spec: ckpt.RunSpec) -> Data:
    """A run's data read back: a stream run re-reads (and checks) its text; a line run reads its split files."""
    if spec.data.get("mode") == "stream":
        corpus = open_stream_corpus(spec.data, spec.vocab, str(run_dir / ckpt.RUN_FILE))
        return Data(spec.data, spec.vocab, corpus=corpus)
    items = {name: ckpt.read_split_items(run_dir, name) for name in ("train", "val", "test")}
    if not items["train"]:
        raise MakemoreError(f"{run_dir}: train.txt is missing or empty; cannot resume")
    labels = read_run_labels(run_dir, spec, items) if spec.data.get("labels") else {}
    return Data(spec.data, spec.vocab, items=items, labels=labels)


# --------------------------------------------------------------------------------------------------- summaries


def describe_data(data: Data, splits: dict[str, Any]) -> list[str]:
    """What the run trains on, as lines to show."""
    info, vocab = data.info, data.vocab
    if not data.stream:
        sizes = ", ".join(f"{name} {len(items)}" for name, items in data.items.items())
        lines = [f"data: {info['source']} ({sizes} items; vocabulary {vocab.size} symbols incl. boundary)"]
        if data.labels:
            lines.append(f"  labels: {describe_counts(info['label_counts'], info['labels'])}")
        return lines
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in splits.items() if len(split))
    batches = "random windows"
    if info["stateful"]:
        batches = "parallel streams, state carried across windows (truncated BPTT)"
    return [
        f"data: {info['source']} (stream mode: {info.get('mode_reason', 'run.json')})",
        f"  {info['chars']:,} chars: {sizes}; vocabulary {vocab.size} symbols incl. the start-of-text token",
        f"  window {info['window']} chars ({info.get('window_origin', 'run.json')}); batches: {batches}",
        f"  evaluation: {splits['val'].plan.describe()}",
    ]
