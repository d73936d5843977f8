"""The NumPy export: a folder with weights.npz, config.json and makemore_sampler.py (NumPy is all it needs).

The sampler is one file shipped with makemore (templates/makemore_sampler.py) and copied as is; before the folder
appears, it is loaded from the staged folder and its log-probabilities of the check items compared with the
package's (`makemore score`; a labelled run's given each label in turn), to 1e-5 nats per item.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from makemore.errors import MakemoreError
from makemore.export.common import Exported, Source, by_label, folder_size, staged_folder
from makemore.export.families import describe

SAMPLER = "makemore_sampler.py"
TOLERANCE = 1e-5  # nats per item, against `makemore score`


def template(name: str) -> bytes:
    return (importlib.resources.files("makemore.export") / "templates" / name).read_bytes()


def import_sampler(path: Path) -> ModuleType:
    """The exported sampler as a module (its own copy: it must work from the folder it was written to)."""
    spec = importlib.util.spec_from_file_location(f"_makemore_sampler_{id(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop(spec.name, None)
    return module


def check(name: str, got: list[float], want: list[float], items: list[str], tolerance: float) -> None:
    worst = max(range(len(items)), key=lambda i: abs(got[i] - want[i]), default=None)
    if worst is not None and not abs(got[worst] - want[worst]) <= tolerance:
        raise MakemoreError(
            f"{name} check failed: {items[worst]!r} gets log-prob {got[worst]:.6f}, makemore {want[worst]:.6f} "
            f"(tolerance {tolerance:g}); nothing was written"
        )


def export_numpy(source: Source, out: Path) -> Exported:
    spec, arrays = describe(source.model)
    with staged_folder(out) as stage:
        (stage / "config.json").write_text(json.dumps(source.describe(), indent=1, ensure_ascii=False) + "\n", "utf-8")
        with open(stage / "weights.npz", "wb") as handle:
            np.savez(handle, **arrays)
        (stage / SAMPLER).write_bytes(template(SAMPLER))
        exported = import_sampler(stage / SAMPLER).load(str(stage))
        items, labels = source.check_items, source.check_labels
        names = [None, *({name: 1} for name in exported.labels)]  # label k given as the weights {name: 1}
        got = by_label(items, labels, lambda chosen, k: exported.score(chosen, names[0 if k is None else k + 1]))
        check("numpy export", got, source.logprobs(items, labels), items, TOLERANCE)
    return Exported(out, folder_size(out))
