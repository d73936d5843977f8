"""Evaluate a trained run on its held-out splits or on a file: NLL (nats/token), bits/char and perplexity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from makemore.data.corpus import open_stream_corpus, read_corpus
from makemore.data.lines import LineSplit, parse_items, read_text
from makemore.data.stream import stream_splits
from makemore.errors import MakemoreError
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt
from makemore.training.evaluation import evaluate

SPLITS = ("train", "val", "test", "all")
MAX_EVAL_ITEM_LEN = 1 << 20  # an --input line longer than this is not an item


def evaluate_run(
    run_dir: str | Path,
    spec: ckpt.RunSpec,
    model: LanguageModel,
    split: str = "all",
    input_path: str | None = None,
    batch_size: int = 1024,
    stride: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per split (or the --input file's name): nll, bpc, ppl, tokens; stream-mode runs add `context` (how each
    character got its context). Raises MakemoreError when there is nothing to evaluate (an empty split)."""
    if split not in SPLITS:
        raise MakemoreError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if batch_size < 1:
        raise MakemoreError(f"batch size must be >= 1, got {batch_size}")
    if spec.data.get("mode") == "stream":
        results = _evaluate_stream(run_dir, spec, model, split, input_path, batch_size, stride)
    else:
        results = _evaluate_lines(run_dir, spec, model, split, input_path, batch_size)
    if not results:
        which = "any held-out split" if split == "all" else f"the {split} split"
        raise MakemoreError(f"{run_dir}: {which} is empty, nothing to evaluate (try another --split, or --input FILE)")
    return results


def _evaluate_lines(
    run_dir: str | Path, spec: ckpt.RunSpec, model: LanguageModel, split: str, input_path: str | None, batch_size: int
) -> dict[str, dict[str, Any]]:
    if input_path:
        sources = {Path(input_path).name: parse_items(read_text(input_path), input_path, MAX_EVAL_ITEM_LEN)}
    else:
        names = ("train", "val", "test") if split == "all" else (split,)
        sources = {name: ckpt.read_split_items(run_dir, name) for name in names}
    results = {}
    for name, items in sources.items():
        if items:  # under --split all an empty split (e.g. no test items) is left out
            for item in items:
                spec.vocab.check(item, f"{name}: item")
            results[name] = evaluate(model, LineSplit(items, spec.vocab).eval_batches(batch_size))
    return results


def _evaluate_stream(
    run_dir: str | Path,
    spec: ckpt.RunSpec,
    model: LanguageModel,
    split: str,
    input_path: str | None,
    batch_size: int,
    stride: int | None,
) -> dict[str, dict[str, Any]]:
    """The held-out splits (or --input) with as much context as the model allows; --split all is val + test."""
    where = str(Path(run_dir) / ckpt.RUN_FILE)
    if input_path:
        corpus = read_corpus(input_path, vocab=spec.vocab)
        name = Path(input_path).name
        data = dict(spec.data, offsets={"train": [1, 1], "val": [1, 1], name: [1, corpus.n_chars + 1]})
        names = [name]
    else:
        corpus, data = open_stream_corpus(spec.data, spec.vocab, where), spec.data
        names = ["val", "test", "dev"] if split == "all" else [split]
    splits = stream_splits(corpus, data, model, stride=stride, where=where)
    context = splits["val"].plan.describe()
    return {
        name: dict(evaluate(model, splits[name].eval_batches(batch_size)), context=context)
        for name in names
        if name in splits and len(splits[name])
    }
