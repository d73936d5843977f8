"""The same command twice gives the same numbers: weights, metrics and samples, whatever the machine is doing.

Each model of the registry trains twice with its default flags (a few steps), and again with two threads (slow
tests), and every number it wrote is compared bit for bit, timing fields aside. What once made runs differ: an
automatic choice between thread modes by timing, a schedule that followed the clock, and an op whose backward
accumulated with atomics on several threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from makemore.cli import main
from makemore.models import MODELS

TIMING_FIELDS = {"elapsed", "tokens_per_s"}
TRAINED = sorted(name for name, spec in MODELS.items() if not spec.made_by)


def train(tmp_path: Path, names_file: Path, out: str, model: str, flags: list[str]) -> Path:
    run = tmp_path / out
    argv = ["train", "-i", str(names_file), "--model", model, "-o", str(run), "--seed", "3", "--samples", "5", *flags]
    if model != "ngram":
        argv += ["--max-steps", "30", "--eval-every", "15", "--log-every", "5"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return run


def numbers(run: Path) -> tuple[list[dict], dict[str, torch.Tensor], str]:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in record.items() if k not in TIMING_FIELDS} for record in metrics]
    weights = load_file(run / "model.safetensors")
    return metrics, weights, (run / "samples.txt").read_text()


@pytest.mark.parametrize(
    "flags", [[], pytest.param(["--threads", "2"], marks=pytest.mark.slow)], ids=["default-flags", "two-threads"]
)
@pytest.mark.parametrize("model", TRAINED)
def test_the_same_command_twice_gives_identical_numbers(tmp_path, names_file, model, flags, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the suite runs at one thread; a run must set its own
    try:
        first = numbers(train(tmp_path, names_file, "a", model, flags))
        second = numbers(train(tmp_path, names_file, "b", model, flags))
    finally:
        torch.set_num_threads(threads)
    assert first[0] == second[0]  # metrics, timing aside
    assert first[1].keys() == second[1].keys()
    for name, tensor in first[1].items():
        assert torch.equal(tensor, second[1][name]), name
    assert first[2] == second[2]  # samples drawn at the end


@pytest.mark.slow
def test_two_processes_with_default_flags_agree(tmp_path, names_file):
    """The reported case, from the outside: the Transformer with default flags in two fresh processes."""
    outputs = []
    for out in ("a", "b"):
        run = tmp_path / out
        command = [sys.executable, "-m", "makemore", "train", "-i", str(names_file), "--model", "transformer",
                   "--max-steps", "40", "--eval-every", "40", "--seed", "3", "-o", str(run)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, text=True)
        evaluation = subprocess.run(
            [sys.executable, "-m", "makemore", "eval", str(run), "--format", "json"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        outputs.append(evaluation.stdout)
    assert outputs[0] == outputs[1]
