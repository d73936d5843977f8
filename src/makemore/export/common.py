"""What every exporter shares: the loaded run (`Source`), the result (`Exported`) and atomic folder writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from makemore.errors import MakemoreError
from makemore.export.families import describe
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

    def describe(self) -> dict[str, Any]:
        """config.json of the exported formats: vocabulary, default max length and the model's spec."""
        spec, _ = describe(self.model)
        return {
            "format": "makemore-export",
            "version": 1,
            "run": self.run_dir.name,
            "vocab": self.spec.vocab.chars,
            "max_len": self.max_len,
            "model": spec,
        }


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
    if getattr(model, "n_labels", 0) or spec.data.get("labels"):  # conditional runs: not yet (see docs/export.md)
        raise MakemoreError(f"{run_dir} is a labelled (conditional) run; export supports unlabelled runs for now")
    train = ckpt.read_split_items(run_dir, "train")
    if "max_len" in spec.data:
        max_len = int(spec.data["max_len"])
    else:  # as Run.default_max_len
        max_len = 2 * max((len(item) for item in train), default=16)
    items = ckpt.read_split_items(run_dir, "val") or ckpt.read_split_items(run_dir, "test") or train
    known = [item for item in items if not spec.vocab.unknown(item)]
    return Source(run_dir, spec, model, max_len, known[:CHECK_ITEMS] or [""])


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


__all__ = ["CHECK_ITEMS", "Exported", "Source", "folder_size", "load_source", "staged_folder"]
