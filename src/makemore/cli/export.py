"""`makemore export RUN --format numpy|onnx|html --out PATH`: a run as files that need no PyTorch or makemore."""

from __future__ import annotations

import argparse

from makemore.cli.common import Parser


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="makemore export",
        description="Export a trained run: numpy (a folder: weights, config, a NumPy-only sampler), onnx (the step "
        "function and the whole-item scorer, checked with onnxruntime) or html (one page with the weights and a "
        "JavaScript sampler, no network). NumPy and ONNX exports are checked against makemore before they are written. "
        "Labelled runs export with their labels: the samplers take a label (or a blend), the ONNX graphs a label "
        "input, the page a label selector.",
    )
    parser.add_argument("run", help="run directory")
    parser.add_argument("--format", required=True, choices=("numpy", "onnx", "html"), help="what to write")
    parser.add_argument("-o", "--out", required=True, metavar="PATH", help="folder (numpy, onnx) or .html file")
    parser.add_argument("--force", action="store_true", help="replace an existing PATH")
    html = parser.add_argument_group("html")
    html.add_argument(
        "--precision",
        choices=("auto", "float32", "float16"),
        default="auto",
        help="weights in the page: float32 (log-probs as makemore's to 1e-4), float16 (half the size, log-probs "
        "to ~1e-3), auto: float32 when the page fits --max-size, else float16 (default: auto)",
    )
    html.add_argument("--max-size", type=float, default=2.0, metavar="MB", help="largest page (default: 2 MB)")
    html.add_argument("--title", default=None, help="page title (default: the run's name)")
    return parser


def cmd_export(argv: list[str]) -> int:
    from makemore.export import export_run

    args = _parser().parse_args(argv)
    options = {}
    if args.format == "html":
        options = {"precision": args.precision, "max_bytes": int(args.max_size * 1e6), "title": args.title}
    result = export_run(args.run, args.format, args.out, force=args.force, **options)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {args.format} export of {args.run} to {result.path} ({result.size / 1e6:.2f} MB)")
    return 0


__all__ = ["cmd_export"]
