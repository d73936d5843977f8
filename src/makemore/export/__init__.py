"""`makemore export`: a trained run as files that need neither PyTorch nor makemore.

    export_run("runs/names", "numpy", "names-numpy")   # weights.npz, config.json, makemore_sampler.py (NumPy only)
    export_run("runs/names", "onnx", "names-onnx")     # step.onnx + score.onnx, checked with onnxruntime
    export_run("runs/names", "html", "names.html")     # one page: weights embedded, a JS sampler

NumPy and ONNX exports are checked against the package before anything is written (the log-probabilities of the
val items; see each exporter; the page's JavaScript is checked in Chromium by tests/test_export_browser.py), and
every export is written atomically: a folder or page appears whole or not at all. Labelled (conditional) runs
export as well: the samplers sample and score given a label or a blend and classify, the ONNX graphs take the label
as an input, the page has a label selector (docs/export.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from makemore.errors import MakemoreError
from makemore.export.common import Exported, Source, load_source
from makemore.export.families import FAMILIES, model_name, onnx_problem

FORMATS = ("numpy", "onnx", "html")


def export_run(run_dir: str | Path, format: str, out: str | Path, force: bool = False, **options: Any) -> Exported:
    """Export the run `run_dir` as `format` (numpy, onnx, html) to `out`. Raises MakemoreError (one line) for an
    unknown format, a combination the format cannot carry, an existing `out` without `force`, or a failed check."""
    if format not in FORMATS:
        raise MakemoreError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not force:
        raise MakemoreError(f"{out} exists; pass --force to replace it")
    source = load_source(run_dir)
    if format == "onnx":
        problem = onnx_problem(source.model)
        if problem:
            raise MakemoreError(problem)
    exporter = _exporter(format)
    return exporter(source, out, **options)


def _exporter(format: str) -> Callable[..., Exported]:
    # imported on use: the ONNX exporter needs onnx/onnxruntime, which numpy and html exports must not
    if format == "numpy":
        from makemore.export.numpy_export import export_numpy

        return export_numpy
    if format == "onnx":
        from makemore.export.onnx_export import export_onnx

        return export_onnx
    from makemore.export.html_export import export_html

    return export_html


__all__ = ["FAMILIES", "FORMATS", "Exported", "Source", "export_run", "load_source", "model_name"]
