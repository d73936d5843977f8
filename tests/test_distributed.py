"""Data-parallel training under torchrun (Gloo on CPU): same losses as one process, one writer, any world size.

The multi-process test launches the real command line, `torchrun --nproc_per_node 2 -m makemore train ...`, twice;
everything else runs in this process. No GPU needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from makemore.cli import main
from makemore.errors import MakemoreError
from makemore.training import distributed

# A tiny MLP without dropout (dropout noise cannot match between 1 and 2 processes), a constant and fairly large
# learning rate so a wrongly weighted gradient shows in the next step's loss, and a global batch of 7 that splits
# unevenly (3 + 4 rows, different token counts) so the token weighting of each rank's loss matters.
TINY = ["--model", "mlp", "--n-embd", "8", "--n-hidden", "16", "--dropout", "0", "--batch-size", "7",
        "--lr", "0.05", "--warmup-steps", "0", "--schedule", "constant", "--eval-every", "2", "--log-every", "1",
        "--eval-batch-size", "4", "--device", "cpu", "--seed", "5", "--samples", "0"]  # fmt: skip


def run_cli(capsys, *argv) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    capsys.readouterr()
    return exit_info.value.code


def torchrun(cwd: Path, *argv) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "makemore", *map(str, argv)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def curve(records: list[dict]) -> list[tuple[str, int, float]]:
    return [
        (r["event"], r["step"], r["train_loss"] if r["event"] == "train" else r["val_loss"])
        for r in records
        if r["event"] in ("train", "eval")
    ]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_and_resume_across_world_sizes(capsys, tmp_path, names_file):
    """One run, continued across world sizes: 2 ranks (steps 1-4) -> 1 process (5-6) -> 2 ranks (7-8).

    Its loss curve must equal an uninterrupted single-process run with the same global batch and seed, the ranks
    must hold identical weights at every evaluation, and only rank 0 may write (one run directory, one log).
    """
    reference = tmp_path / "single"
    assert run_cli(capsys, "train", "-i", names_file, "--out", reference, "--max-steps", 8, *TINY) == 0

    work = tmp_path / "work"  # the torchrun runs' working directory: nothing but the run may appear in it
    work.mkdir()
    run = work / "ddp"
    launched = torchrun(work, "train", "-i", names_file, "--out", run.name, "--max-steps", 4, *TINY)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "2 ranks (gloo), global batch 7 = 3-4 per rank" in launched.stdout
    assert launched.stdout.count("stopped: max_steps") == 1  # rank 1 prints nothing
    assert launched.stderr.count("Traceback") == 0

    # A DDP checkpoint resumes in one process (no `module.` prefix in the saved weights)...
    assert run_cli(capsys, "train", "--resume", run, "--max-steps", 6) == 0
    # ...and a single-process checkpoint resumes under torchrun.
    launched = torchrun(work, "train", "--resume", run.name, "--max-steps", 8)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "resuming at step 6 of 8" in launched.stdout

    assert sorted(p.name for p in work.iterdir()) == ["ddp"]
    expected, got = curve(metrics(reference)), curve(metrics(run))
    assert [(e, s) for e, s, _ in got] == [(e, s) for e, s, _ in expected]  # no line twice, none missing
    for (event, step, want), (_, _, have) in zip(expected, got):
        assert have == pytest.approx(want, rel=1e-5, abs=1e-6), (event, step)
    ddp_evals = [r for r in metrics(run) if r["event"] == "eval" and r["step"] in (2, 4, 8)]
    assert [r["ranks"] for r in ddp_evals] == [2, 2, 2]
    assert [r["rank_divergence"] for r in ddp_evals] == [0.0, 0.0, 0.0]  # identical weights on both ranks
    assert not any(name.startswith(".") and name.endswith(".tmp") for name in os.listdir(run))

    # The final weights agree with the single-process run's.
    from safetensors.torch import load_file

    for name, tensor in load_file(reference / "model.safetensors").items():
        torch.testing.assert_close(load_file(run / "model.safetensors")[name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_rank_0_failure_stops_every_rank(tmp_path, names_file):
    """The run directory exists (no --force): rank 0 reports it once, rank 1 stops instead of hanging."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something").write_text("x")
    launched = torchrun(tmp_path, "train", "-i", names_file, "--out", "taken", "--max-steps", 2, *TINY)
    assert launched.returncode != 0
    assert launched.stderr.count("already exists; use --force") == 1
    assert "stopping because rank 0 failed" in launched.stderr


# ------------------------------------------------------------------------------------------------ in-process units


def test_detect_reads_torchrun_variables():
    assert distributed.detect({}) == distributed.SINGLE
    info = distributed.detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
    assert distributed.detect({"RANK": "0", "WORLD_SIZE": "1"}).enabled is False
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "-1", "WORLD_SIZE": "2"}):
        with pytest.raises(MakemoreError):
            distributed.detect(bad)


def test_setup_without_torchrun_starts_nothing():
    assert distributed.setup(torch.device("cpu"), environ={}) == distributed.SINGLE
    assert not torch.distributed.is_initialized()
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]  # collectives are no-ops in one process
    assert distributed.parameter_divergence(torch.nn.Linear(2, 2)) == 0.0
    calls = []
    distributed.run_on_main(lambda: calls.append(1))
    assert calls == [1]


@pytest.mark.parametrize("rows, world", [(7, 2), (8, 2), (5, 5), (10, 3), (3, 1)])
def test_shards_cover_the_global_batch_once(rows, world):
    slices = [distributed.shard_rows(rows, distributed.DistInfo(rank, world)) for rank in range(world)]
    covered = [i for s in slices for i in range(rows)[s]]
    assert covered == list(range(rows))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_backends_and_devices():
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda")) == "nccl"
    with pytest.raises(MakemoreError, match="not supported on mps"):
        distributed.backend_for(torch.device("mps"))
    two = distributed.DistInfo(1, 2, 1)
    assert distributed.local_device(torch.device("cpu"), two) == torch.device("cpu")
    assert distributed.local_device(torch.device("cuda", 0), two) == torch.device("cuda", 0)  # explicit index kept
    if torch.cuda.device_count() < 2:
        with pytest.raises(MakemoreError, match="LOCAL_RANK 1 has no GPU"):
            distributed.local_device(torch.device("cuda"), two)
