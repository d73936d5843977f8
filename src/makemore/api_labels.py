"""The label side of the Python API (`makemore.Run`'s label methods; the logic is in generation/classify.py).

run = makemore.load("runs/names-by-sex")
run.labels                                           # ['female', 'male']
run.sample(n=5, label="female", seed=0)              # names drawn given the label
run.sample(n=5, label="female=0.7,male=0.3")         # a blend: a mixture of the two at every step
run.classify(["emma", "liam"])                       # [{'item': 'emma', 'label': 'female', 'probs': {...}}, ...]
run.evaluate_labels(split="val")                     # per-label NLL, accuracy, confusion matrix
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from makemore.data.labels import LABELS_SUFFIX, parse_labelled
from makemore.data.lines import read_text
from makemore.errors import MakemoreError
from makemore.generation.classify import classify_items, conditioned, label_report, run_labels
from makemore.runs import checkpoint as ckpt

MAX_EVAL_ITEM_LEN = 1 << 20


class LabelledRun:
    """Mixed into `Run`: needs path, spec, vocab, base_model (the model as trained) and model (what decoders use:
    for a labelled run, the unconditional p(item) = sum_k p(k) p(item | k))."""

    path: Path
    spec: ckpt.RunSpec
    base_model: Any
    model: Any

    @property
    def labels(self) -> list[str]:
        """The run's labels ([] for a run trained without them)."""
        return run_labels(self.spec.data)

    def under_label(self, label: str | dict[str, float], blend: str = "mixture", guidance: float | None = 0.0) -> Any:
        """This run with its model conditioned on `label`: 'female', 'female=0.7,male=0.3' or {'female': 0.7, ...}
        (blend "mixture": the conditional next-character distributions mixed at every step; "embedding": one model
        reading the interpolated label embedding; `guidance` > 0: items more typical of one label, None: the
        sampling default, see generation.classify.conditioned). Shares the novelty index and the compiled
        constraints."""
        view = copy.copy(self)
        view.model = conditioned(self.base_model, self.spec.data, label, blend, guidance)
        return view

    def classify(self, items: str | list[str], batch_size: int = 512) -> list[dict[str, Any]]:
        """For each item: item, label (the most probable), probs ({label: p(label | item)}, summing to 1), by
        Bayes' rule: p(label | item) ∝ p(item | label) p(label), p(label) the labels' shares of train."""
        items = [items] if isinstance(items, str) else list(items)
        if any(not item for item in items):
            raise MakemoreError("cannot classify an empty string")
        return classify_items(self.base_model, self.spec.vocab, self.spec.data, items, batch_size)

    def evaluate_labels(self, split: str = "all", input_path: str | None = None) -> dict[str, dict[str, Any]]:
        """Per split (or the label<TAB>item file `input_path`): the NLL given the true label (overall and per label),
        the unconditional NLL of the same items, classification accuracy (and the majority class's), and the
        confusion matrix (rows: true label, columns: predicted)."""
        if not self.labels:
            raise MakemoreError(f"{self.path}: trained without labels; there is nothing to evaluate per label")
        if input_path:
            items, labels = parse_labelled(read_text(input_path), input_path, MAX_EVAL_ITEM_LEN)
            sources = {Path(input_path).name: (items, labels)}
        else:
            names = ("train", "val", "test") if split == "all" else (split,)
            if split not in ("train", "val", "test", "all"):
                raise MakemoreError(f"split must be one of train, val, test, all, got {split!r}")
            sources = {
                name: (ckpt.read_split_items(self.path, name), ckpt.read_split_items(self.path, name + LABELS_SUFFIX))
                for name in names
            }
        results = {}
        for name, (items, labels) in sources.items():
            if items:
                results[name] = label_report(self.base_model, self.spec.vocab, self.spec.data, items, labels)
        if not results:
            raise MakemoreError(f"{self.path}: the {split} split is empty, nothing to evaluate")
        return results
