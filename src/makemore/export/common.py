"""What every exporter shares: the loaded run (`Source`), the result (`Exported`) and atomic folder writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from makemore.errors import MakemoreError
from makemore.export.families import describe
from makemore.generation.classify import conditioned, run_labels, run_prior
from makemore.generation.scoring import score_items
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt

CHECK_ITEMS = 200  # val items whose log-probs each export is checked on (all of them would cost time, not trust)


@dataclass
class Source:
    """A loaded run, as every exporter sees it."""

    run_dir: Path
    spec: ckpt.RunSpec
    model: LanguageModel
    max_len: int  # default longest item when sampling (as `makemore sample`)
    check_items: list[str]  # items to compare the export's log-probs with the package's on
    labels: list[str] = field(default_factory=list)  # a labelled run's label names ([]: unlabelled)

    @property
    def check_labels(self) -> list[int] | None:
        """A labelled run's check items are scored given labels 0, 1, ..., K-1, 0, ... in turn (every label is
        checked, whatever the val split holds); None for an unlabelled run."""
        return [i % len(self.labels) for i in range(len(self.check_items))] if self.labels else None

    def describe(self) -> dict[str, Any]:
        """config.json of the exported formats: vocabulary, default max length, the model's spec, and a labelled
        run's label names and prior p(label) (the labels' shares of the training items, as `makemore classify`)."""
        spec, _ = describe(self.model)
        config = {
            "format": "makemore-export",
            "version": 1,
            "run": self.run_dir.name,
            "vocab": self.spec.vocab.chars,
            "max_len": self.max_len,
            "model": spec,
        }
        if self.labels:
            config.update(labels=self.labels, label_prior=run_prior(self.spec.data))
        return config

    def logprobs(self, items: list[str], labels: list[int] | None = None) -> list[float]:
        """`makemore score` of each item (given labels[i], a label index, for a labelled run)."""

        def score(chosen: list[str], k: int | None) -> list[float]:
            model = self.model if k is None else conditioned(self.model, self.spec.data, self.labels[k])
            return [r["logprob"] for r in score_items(model, self.spec.vocab, chosen)]

        return by_label(items, labels, score)


def by_label(items: list[str], labels: list[int] | None, score: Callable[[list[str], Any], list[float]]) -> list[float]:
    """score(items, None), or each label's items scored together, score(those items, k), in the items' order."""
    if labels is None:
        return list(score(items, None))
    out = [0.0] * len(items)
    for k in sorted(set(labels)):
        rows = [i for i, label in enumerate(labels) if label == k]
        for i, value in zip(rows, score([items[i] for i in rows], k)):
            out[i] = float(value)
    return out


@dataclass
class Exported:
    path: Path
    size: int  # bytes written
    notes: list[str] = field(default_factory=list)  # what the user should know (printed by the CLI)


def load_source(run_dir: str | Path) -> Source:
    run_dir = Path(run_dir)
    spec, model = ckpt.load_model(run_dir, "cpu")
    if spec.data.get("mode") == "stream":
        raise MakemoreError(f"{run_dir} is a stream-mode run; export supports line-mode runs (items, one per line)")
    train = ckpt.read_split_items(run_dir, "train")
    if "max_len" in spec.data:
        max_len = int(spec.data["max_len"])
    else:  # as Run.default_max_len
        max_len = 2 * max((len(item) for item in train), default=16)
    items = ckpt.read_split_items(run_dir, "val") or ckpt.read_split_items(run_dir, "test") or train
    known = [item for item in items if not spec.vocab.unknown(item)]
    return Source(run_dir, spec, model, max_len, known[:CHECK_ITEMS] or [""], run_labels(spec.data))


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` when the block ends without an error (a replaced `out`
    goes only then); on an error it is removed, and `out` is as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~ckpt._umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "previous")
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


__all__ = ["CHECK_ITEMS", "Exported", "Source", "by_label", "folder_size", "load_source", "staged_folder"]
