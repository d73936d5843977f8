"""`makemore knn RUN --out RUN_KNN`: parse, call jobs.knn.build_knn, print what was chosen."""

from __future__ import annotations

import argparse
from typing import Any

from makemore.cli.common import Parser
from makemore.models.knn import KNNConfig


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="makemore knn",
        description="Give a trained network a memory of its training data (a kNN-LM, Khandelwal et al. 2020): each "
        "prediction mixes the network's with what followed the nearest of its states in train. The neighbours' "
        "temperature and weight are chosen on val. The result is a run like any other.",
    )
    parser.add_argument("run", metavar="RUN", help="a trained line-mode network run (rnn, gru, lstm, transformer, ...)")
    parser.add_argument("-o", "--out", required=True, metavar="RUN_KNN", help="run directory to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    parser.add_argument(
        "--dim", type=int, default=KNNConfig().dim, help="principal axes of the states kept (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=KNNConfig().k, help="neighbours per prediction (default: %(default)s)")
    parser.add_argument(
        "--cells",
        type=int,
        default=None,
        help="group the states in this many k-means cells and search the --probes nearest (default: exact search up "
        "to 65,536 distinct states, else about 512 states a cell; 0: always exact)",
    )
    parser.add_argument(
        "--probes", type=int, default=KNNConfig().probes, help="cells searched per prediction (default: %(default)s)"
    )
    return parser


def cmd_knn(argv: list[str]) -> int:
    from makemore.jobs.knn import build_knn

    args = _parser().parse_args(argv)
    print(describe_knn(build_knn(args.run, args.out, args.force, args.dim, args.k, args.cells, args.probes)))
    return 0


def describe_knn(result: dict[str, Any]) -> str:
    lines = [
        f"memory: {result['n_keys']:,} distinct states of {result['positions']:,} training positions"
        + (f", in {result['cells']:,} cells" if result["cells"] else "")
        + f"; on val ({result['tokens']:,} tokens):"
    ]
    lines.append(f"  the network alone  val nll {result['net_val_nll']:.4f}")
    if result["lam"] == 0:
        lines.append("  its neighbours do not help on val: lam 0 (the run predicts as the network)")
    else:
        lines.append(
            f"  with its memory    val nll {result['val_nll']:.4f}  (temperature {result['temperature']:.3g}, "
            f"lam {result['lam']:g})"
        )
    lines.append(f"run directory: {result['out']}")
    return "\n".join(lines)


__all__ = ["cmd_knn"]
