"""`makemore mix RUN [RUN...] --out RUN_MIX`: parse, call training.mixing.mix_runs, print what was fitted."""

from __future__ import annotations

import argparse
from typing import Any

from makemore.cli.common import Parser
from makemore.models.mix import MixConfig
from makemore.models.mix_weights import COMBINES


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="makemore mix",
        description="Mix trained runs: p = sum_i w_i p_i (linear, the weights fitted by EM) or p = softmax(sum_i "
        "w_i log p_i) (log-linear), the weights fitted on val (the members never trained on val). The result is a run "
        "like any other.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="trained run directories sharing one vocabulary")
    parser.add_argument("-o", "--out", required=True, metavar="RUN_MIX", help="run directory to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    parser.add_argument(
        "--val-file", help="fit the weights on this file instead of the members' val split (never their train data)"
    )
    parser.add_argument(
        "--em-steps", type=int, default=MixConfig().em_steps, help="most EM iterations (default: %(default)s)"
    )
    parser.add_argument(
        "--combine",
        choices=(*COMBINES, "best"),
        default="linear",
        help="how the members' distributions combine; best: both fitted, the lower val NLL kept (default: linear)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    return parser


def cmd_mix(argv: list[str]) -> int:
    from makemore.jobs.mix import mix_runs

    args = _parser().parse_args(argv)
    result = mix_runs(args.runs, args.out, args.force, args.val_file, args.em_steps, args.device, combine=args.combine)
    print(describe_mix(result))
    return 0


def describe_mix(result: dict[str, Any]) -> str:
    how = "EM" if result["combine"] == "linear" else "L-BFGS"
    lines = [f"{result['combine']} mix, weights fitted by {how} on {result['fitted_on']} ({result['tokens']} tokens):"]
    width = max(len(member["run"]) for member in result["members"])
    for member in result["members"]:
        lines.append(
            f"  {member['weight']:.4f}  {member['run']:<{width}}  {member['model']:<12} val nll {member['val_nll']:.4f}"
        )
    lines.append(f"mix: val nll {result['val_nll']:.4f}; run directory: {result['out']}")
    return "\n".join(lines)


__all__ = ["cmd_mix"]
