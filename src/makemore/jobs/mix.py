"""Mix trained runs: p = sum_i w_i p_i (or log-linear), the weights fitted on val (models/mix.py), as a new run.

The mix run directory describes itself like any run: run.json (model "mix"), one model.safetensors (the mixture
weights and every member's weights), members/<i>/run.json (each member's structure), and the data splits of the
members, so eval / sample / score work on it as on any other run. `mix_runs` is what `makemore mix` and the Python
API call.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from makemore.data.lines import LineSplit, parse_items, read_text
from makemore.errors import MakemoreError
from makemore.jobs.train_labels import labelled_val
from makemore.models import LanguageModel
from makemore.models.mix import MEMBERS_DIR, Mix, MixConfig, member_dir, member_log_probs
from makemore.models.mix_weights import COMBINES, HeldOut, fit
from makemore.runs import checkpoint as ckpt

SPLIT_FILES = ("train.txt", "val.txt", "test.txt")
SPLITS = ("train", "val", "test")


@dataclass
class Members:
    """The loaded runs being mixed."""

    runs: list[Path]
    specs: list[ckpt.RunSpec]
    models: list[LanguageModel]

    @property
    def stream(self) -> bool:
        return self.specs[0].data.get("mode") == "stream"


def mix_runs(
    runs: list[str | Path],
    out: str | Path,
    force: bool = False,
    val_file: str | Path | None = None,
    em_steps: int = MixConfig().em_steps,
    device: str = "cpu",
    min_runs: int = 2,
    combine: str = "linear",
) -> dict[str, Any]:
    """Fit mixture weights of `runs` on val (or `val_file`, line-mode runs only) and write the mix run to `out`.

    `combine`: "linear" (EM), "log-linear", or "best" (both fitted, the one with the lower val NLL kept).
    Returns what was fitted: {"out", "fitted_on", "tokens", "combine", "val_nll", "members": [{"run", "model",
    "weight", "val_nll"}]}. Raises MakemoreError for runs that cannot be mixed (different vocabularies, splits or
    texts).
    """
    from makemore.training.devices import resolve_device

    if em_steps < 1:
        raise MakemoreError(f"--em-steps must be >= 1, got {em_steps}")
    if combine not in (*COMBINES, "best"):
        raise MakemoreError(f"--combine must be one of {', '.join(COMBINES)} or best, got {combine!r}")
    if len(runs) < min_runs:  # `--model auto` writes a mix of one (its n-gram) to be usable at once
        raise MakemoreError("mix needs at least two runs")
    members = _load_members([Path(run) for run in runs], resolve_device(device))
    whole = combine != "linear"  # a log-linear mix is fitted on the members' whole distributions
    if members.stream:
        if val_file:
            raise MakemoreError("--val-file is for line-mode runs; stream runs are mixed on their val stretch")
        held_out, data, splits = _stream_val(members, whole)
    else:
        held_out, data, splits = _line_val(members, val_file, whole)
    fitted_on = str(Path(val_file).resolve()) if val_file else "val"
    combine, weights, val_nll = fit(held_out, combine, em_steps)
    config = MixConfig(n_members=len(runs), em_steps=em_steps, combine=combine)
    result = _write_mix(Path(out), members, config, weights, val_nll, data, splits, fitted_on, force)
    result["tokens"] = int(held_out.log_probs.size(1))
    for member, row in zip(result["members"], held_out.log_probs):
        member["val_nll"] = -row.mean().item()
    return result


def _load_members(runs: list[Path], device: torch.device) -> Members:
    loaded = [ckpt.load_model(run, device) for run in runs]
    members = Members(runs, [spec for spec, _ in loaded], [model for _, model in loaded])
    vocab = members.specs[0].vocab
    for run, spec in zip(runs[1:], members.specs[1:]):
        if spec.vocab != vocab:
            raise MakemoreError(
                f"{run}: its vocabulary ({spec.vocab.size} symbols) differs from {runs[0]}'s ({vocab.size}): "
                "mixed runs must share one vocabulary (train them on the same data)"
            )
    streams = [spec.data.get("mode") == "stream" for spec in members.specs]
    if any(streams) and not all(streams):
        raise MakemoreError("mix runs of one kind: all line mode or all stream mode (on the same text)")
    return members


def _line_val(members: Members, val_file: str | Path | None, whole: bool) -> tuple[HeldOut, dict, dict[str, list]]:
    """Line-mode members trained on the same splits: their log-probs of each val token (or of `val_file`)."""
    runs, vocab = members.runs, members.specs[0].vocab
    splits = {name: ckpt.read_split_items(runs[0], name) for name in SPLITS}
    for run in runs[1:]:
        for name in ("val", "test") if not val_file else ("test",):
            if ckpt.read_split_items(run, name) != splits[name]:
                raise MakemoreError(
                    f"{run}: its {name} split differs from {runs[0]}'s: mix runs trained on the same splits"
                    + (" (or give --val-file)" if name == "val" else "")
                )
    if val_file:
        splits["val"] = parse_items(read_text(val_file), str(val_file), 1 << 20)
        for item in splits["val"]:
            vocab.check(item, f"{val_file}: item")
    if not splits["val"]:
        raise MakemoreError(f"{runs[0]}: no val split to fit the weights on; give --val-file")
    val = labelled_val(members.specs, runs[0], splits, val_file) or LineSplit(splits["val"], vocab)
    held_out = member_log_probs(members.models, val.eval_batches(1024), whole)  # (members, tokens)
    return held_out, dict(members.specs[0].data), splits


def _stream_val(members: Members, whole: bool) -> tuple[HeldOut, dict, None]:
    """Stream-mode members of one text: their log-probs of its val stretch, which every member reads with its own
    context (Mix.member_logits_with_state) in windows of half the smallest member window."""
    from makemore.data.corpus import open_stream_corpus
    from makemore.data.stream import stream_splits

    runs, specs = members.runs, members.specs
    first = specs[0].data
    for run, spec in zip(runs[1:], specs[1:]):
        same_text = spec.data.get("sha256") == first.get("sha256")
        if not same_text or spec.data.get("offsets", {}).get("val") != first.get("offsets", {}).get("val"):
            raise MakemoreError(f"{run}: trained on another text or split than {runs[0]}: mix runs of one text")
    data = dict(first, stateful=False, window=max(1, min(int(spec.data["window"]) for spec in specs) // 2))
    data["window_origin"] = "half the smallest member window (mix)"
    where = str(runs[0] / ckpt.RUN_FILE)
    corpus = open_stream_corpus(data, specs[0].vocab, where)
    mix = Mix(MixConfig(n_members=len(members.models)), specs[0].vocab.size, members.models)
    val = stream_splits(corpus, data, mix, where=where)["val"]
    if not len(val):
        raise MakemoreError(f"{runs[0]}: no val stretch to fit the weights on")
    return member_log_probs(members.models, val.eval_batches(1024), whole), data, None  # (members, chars)


def _write_mix(
    out: Path,
    members: Members,
    config: MixConfig,
    weights: torch.Tensor,
    val_nll: float,
    data: dict[str, Any],
    splits: dict[str, list[str]] | None,
    fitted_on: str,
    force: bool,
) -> dict[str, Any]:
    """Write the mix run directory with its fitted `weights`; returns the summary."""
    runs, specs = members.runs, members.specs
    mix = Mix(config, specs[0].vocab.size, members.models)
    mix.weights = weights.to(mix.weights.device)
    prepare_out(out, runs, force)
    for i, run in enumerate(runs):
        copy_member_spec(run, out, i)
    data["mix"] = {
        "members": [str(run.resolve()) for run in runs],
        "weights": weights.tolist(),
        "fitted_on": fitted_on,
        "val_nll": val_nll,  # what `makemore info` shows as the mix's val loss (a mix logs no metrics)
    }
    ckpt.save_tensors(out / ckpt.WEIGHTS_FILE, mix.state_dict())
    if splits is not None:
        ckpt.write_split_items(out, splits)
    spec = ckpt.RunSpec("mix", config, {}, specs[0].vocab, data)
    ckpt.write_json(out / ckpt.RUN_FILE, spec.to_json())  # last: a run.json means a complete run
    return {
        "out": str(out),
        "fitted_on": fitted_on,
        "combine": config.combine,
        "val_nll": val_nll,
        "members": [
            {"run": str(run), "model": spec.model_name, "weight": weight}
            for run, spec, weight in zip(runs, specs, weights.tolist())
        ],
    }


def copy_member_spec(run: Path, out: Path, index: int) -> None:
    """`run`'s structure (its run.json, and its own members' if it is made of runs) as member `index` of `out`."""
    member_dir(out, index).mkdir(parents=True, exist_ok=True)
    ckpt.write_json(member_dir(out, index) / ckpt.RUN_FILE, ckpt.read_json(run / ckpt.RUN_FILE))
    if (run / MEMBERS_DIR).is_dir():  # a member that is itself a mix brings its members' run.json files
        shutil.copytree(run / MEMBERS_DIR, member_dir(out, index) / MEMBERS_DIR)


def prepare_out(out: Path, runs: list[Path], force: bool) -> None:
    """Make `out` an empty run directory: refuse a file, one of the mixed runs, or (without force) a used one."""
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


__all__ = ["copy_member_spec", "mix_runs", "prepare_out"]
