"""The `makemore mix RUN [RUN...] --out RUN_MIX` command: interpolate trained runs, weights fitted on val by EM.

The mix run directory describes itself like any run: run.json (model "mix"), one model.safetensors (the mixture
weights and every member's weights), members/<i>/run.json (each member's structure), and the data splits of the
members, so `makemore eval / sample / score RUN_MIX` work as for any other run.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from makemore.data.lines import LineSplit, parse_items, read_text
from makemore.errors import MakemoreError
from makemore.models.mix import MEMBERS_DIR, Mix, MixConfig, fit_weights, member_dir, member_log_probs, mixture_nll
from makemore.runs import checkpoint as ckpt

SPLIT_FILES = ("train.txt", "val.txt", "test.txt")


def _parser() -> argparse.ArgumentParser:
    from makemore.cli.common import Parser

    parser = Parser(
        prog="makemore mix",
        description="Mix trained runs: p = sum_i w_i p_i, the weights fitted on val by EM (the members never "
        "trained on val). The result is a run like any other.",
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    return parser


def _prepare_out(out: Path, runs: list[Path], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MakemoreError(f"{out}: exists and is not a directory")
    if any(out.resolve() == run.resolve() for run in runs):
        raise MakemoreError(f"{out}: is one of the runs being mixed")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise MakemoreError(f"{out}: already exists; use --force to overwrite")
        for name in (ckpt.RUN_FILE, ckpt.WEIGHTS_FILE, "samples.txt", *SPLIT_FILES):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / MEMBERS_DIR, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MakemoreError(f"{out}: cannot create the run directory ({error.strerror})") from None


def cmd_mix(argv: list[str]) -> int:
    from makemore.training.trainer import resolve_device

    args = _parser().parse_args(argv)
    if args.em_steps < 1:
        raise MakemoreError("--em-steps must be >= 1")
    runs = [Path(run) for run in args.runs]
    if len(runs) < 2:
        raise MakemoreError("mix needs at least two runs")
    device = resolve_device(args.device)
    loaded = [ckpt.load_model(run, device) for run in runs]
    specs, members = [spec for spec, _ in loaded], [model for _, model in loaded]
    vocab = specs[0].vocab
    for run, spec in zip(runs[1:], specs[1:]):
        if spec.vocab != vocab:
            raise MakemoreError(
                f"{run}: its vocabulary ({spec.vocab.size} symbols) differs from {runs[0]}'s ({vocab.size}): "
                "mixed runs must share one vocabulary (train them on the same data)"
            )
    streams = [spec.data.get("mode") == "stream" for spec in specs]
    if any(streams):
        if not all(streams):
            raise MakemoreError("mix runs of one kind: all line mode or all stream mode (on the same text)")
        if args.val_file:
            raise MakemoreError("--val-file is for line-mode runs; stream runs are mixed on their val stretch")
        return _mix_streams(args, runs, specs, members, device)
    splits = {name: ckpt.read_split_items(runs[0], name) for name in ("train", "val", "test")}
    for run in runs[1:]:
        for name in ("val", "test") if not args.val_file else ("test",):
            if ckpt.read_split_items(run, name) != splits[name]:
                raise MakemoreError(
                    f"{run}: its {name} split differs from {runs[0]}'s: mix runs trained on the same splits"
                    + (" (or give --val-file)" if name == "val" else "")
                )
    if args.val_file:
        splits["val"] = parse_items(read_text(args.val_file), args.val_file, 1 << 20)
        for item in splits["val"]:
            vocab.check(item, f"{args.val_file}: item")
    if not splits["val"]:
        raise MakemoreError(f"{runs[0]}: no val split to fit the weights on; give --val-file")

    val = LineSplit(splits["val"], vocab)
    log_probs = member_log_probs(members, val.eval_batches(1024))  # (members, tokens)
    data = dict(specs[0].data)
    _write_mix(args, runs, specs, members, log_probs, data, splits, device)
    return 0


def _mix_streams(args: argparse.Namespace, runs: list[Path], specs: list, members: list, device: Any) -> int:
    """Stream-mode members of one text: the weights are fitted on its val stretch, which every member reads with
    its own context (Mix.member_logits_with_state) in windows of half the smallest member window."""
    from makemore.data.stream import open_stream_corpus, stream_splits

    first = specs[0].data
    for run, spec in zip(runs[1:], specs[1:]):
        same_text = spec.data.get("sha256") == first.get("sha256")
        if not same_text or spec.data.get("offsets", {}).get("val") != first.get("offsets", {}).get("val"):
            raise MakemoreError(f"{run}: trained on another text or split than {runs[0]}: mix runs of one text")
    data = dict(first, stateful=False, window=max(1, min(int(spec.data["window"]) for spec in specs) // 2))
    data["window_origin"] = "half the smallest member window (mix)"
    corpus = open_stream_corpus(data, specs[0].vocab, str(runs[0] / ckpt.RUN_FILE))
    mix = Mix(MixConfig(n_members=len(members)), specs[0].vocab.size, members)
    val = stream_splits(corpus, data, mix, where=str(runs[0] / ckpt.RUN_FILE))["val"]
    if not len(val):
        raise MakemoreError(f"{runs[0]}: no val stretch to fit the weights on")
    log_probs = member_log_probs(members, val.eval_batches(1024))  # (members, chars)
    _write_mix(args, runs, specs, members, log_probs, data, None, device)
    return 0


def _write_mix(args, runs, specs, members, log_probs, data, splits, device) -> None:
    """Fit the weights on `log_probs` (members, tokens), write the mix run directory and report."""
    weights = fit_weights(log_probs, args.em_steps)
    config = MixConfig(n_members=len(members), em_steps=args.em_steps)
    mix = Mix(config, specs[0].vocab.size, members)
    mix.weights = weights.to(device)

    out = Path(args.out)
    _prepare_out(out, runs, args.force)
    for i, run in enumerate(runs):
        member_dir(out, i).mkdir(parents=True, exist_ok=True)
        ckpt.write_json(member_dir(out, i) / ckpt.RUN_FILE, ckpt.read_json(run / ckpt.RUN_FILE))
        if (run / MEMBERS_DIR).is_dir():  # a member that is itself a mix brings its members' run.json files
            shutil.copytree(run / MEMBERS_DIR, member_dir(out, i) / MEMBERS_DIR)
    data["mix"] = {
        "members": [str(run.resolve()) for run in runs],
        "weights": weights.tolist(),
        "fitted_on": str(Path(args.val_file).resolve()) if args.val_file else "val",
    }
    spec = ckpt.RunSpec("mix", config, {}, specs[0].vocab, data)
    ckpt.save_tensors(out / ckpt.WEIGHTS_FILE, mix.state_dict())
    if splits is not None:
        ckpt.write_split_items(out, splits)
    ckpt.write_json(out / ckpt.RUN_FILE, spec.to_json())  # last: a run.json means a complete run

    print(f"weights fitted by EM on {args.val_file or 'val'} ({log_probs.size(1)} tokens):")
    width = max(len(str(run)) for run in runs)
    for run, spec_i, weight, row in zip(runs, specs, weights.tolist(), log_probs):
        print(f"  {weight:.4f}  {str(run):<{width}}  {spec_i.model_name:<12} val nll {-row.mean().item():.4f}")
    print(f"mix: val nll {mixture_nll(log_probs, weights):.4f}; run directory: {out}")


__all__ = ["cmd_mix"]
