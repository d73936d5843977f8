"""`makemore.jobs.train.train`, the one function behind `makemore train`: its results, its errors, resume
semantics, and run directories that appear only once loadable."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from makemore.cli.common import progress_printer
from makemore.errors import MakemoreError
from makemore.jobs import lr_find as lr_finder
from makemore.jobs import train as launch
from makemore.models.ngram import NGram
from makemore.runs import checkpoint as ckpt

TINY = {"n_embd": 4, "n_hidden": 16, "batch_size": 8, "log_every": 5, "threads": 1, "device": "cpu"}
TINY_FLAGS = ["--model", "mlp", "--n-embd", "4", "--n-hidden", "16", "--batch-size", "8", "--log-every", "5",
              "--threads", "1", "--device", "cpu", "--samples", "0"]  # fmt: skip


def error_lines(err: str) -> list[str]:
    """stderr without progress lines."""
    return [line for line in err.splitlines() if line.strip() and " | " not in line]


def siblings(run: Path) -> list[str]:
    """Everything next to `run` that belongs to it: the run itself and any partial (hidden) copies."""
    return sorted(p.name for p in run.parent.iterdir() if p.name.lstrip(".").startswith(run.name))


def train_tiny(tmp_path: Path, names_file: Path, name: str = "run", **settings) -> dict:
    options = {"model": "mlp", "samples": 0, "eval_every": 5, **TINY, **settings}
    return launch.train(str(names_file), out=tmp_path / name, **options)


# ------------------------------------------------------------------------------------------------------- the API


def test_train_returns_what_the_cli_prints(tmp_path, names_file):
    events = []
    result = launch.train(
        str(names_file), "mlp", tmp_path / "run", max_steps=10, eval_every=5, samples=4, on_event=events.append, **TINY
    )
    assert result["stopped"] == "max_steps" and result["step"] == 10 and result["is_main"]
    assert result["run_dir"] == str(tmp_path / "run") and result["model"] == "mlp"
    assert result["val"]["nll"] == pytest.approx(result["best_val"]) and result["best_step"] == 10
    assert len(result["samples"]) == 4 and {"item", "status"} <= set(result["samples"][0])
    assert (tmp_path / "run" / "samples.txt").read_text().splitlines() == [s["item"] for s in result["samples"]]
    kinds = {event["event"] for event in events}
    assert {"info", "start", "train", "eval"} <= kinds
    assert any(e["event"] == "info" and e["message"].startswith("data: ") for e in events)


def test_settings_are_checked_in_one_place_and_errors_name_flags(tmp_path, names_file):
    cases = {
        "warp_speed": (1, "--warp-speed"),
        "n_embdd": (4, "did you mean --n-embd"),
        "lr": ("fast", "--lr expects float"),
        "max_steps": (0, "--max-steps must be >= 1"),
        "n_embd": (0, "--n-embd"),
        "optimizer": ("adam", "--optimizer must be one of"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(MakemoreError, match=message.replace("(", r"\(")):
            train_tiny(tmp_path, names_file, **{name: value})
    with pytest.raises(MakemoreError, match="--samples"):
        launch.train(str(names_file), "mlp", tmp_path / "run", samples=-1)
    assert not (tmp_path / "run").exists()


def test_cli_errors_name_flags_and_exit_2(capsys, tmp_path, names_file):
    for flags, needle in ((["--max-steps", 0], "--max-steps must be >= 1"), (["--n-embd", -1], "--n-embd")):
        code, _, err = run_cli(capsys, "train", "-i", names_file, "-o", tmp_path / "run", *TINY_FLAGS, *flags)
        assert code == 2 and len(error_lines(err)) == 1 and needle in err, err
        assert "max_steps" not in err and "n_embd" not in err


def test_auto_order_is_shown_and_recorded(capsys, tmp_path, names_file):
    run = tmp_path / "ng"
    code, out, err = run_cli(capsys, "train", "-i", names_file, "-o", run, "--model", "ngram", "--order", "auto")
    assert code == 0, err
    order = json.loads((run / ckpt.RUN_FILE).read_text())["fitted"]["order"]
    assert order >= 1 and f"fitted: --order {order}" in out
    assert ckpt.read_run_spec(run).model_config.order == 0  # the setting as asked; "fitted" says what it chose


# ----------------------------------------------------------------------------------------------------- empty data


@pytest.mark.parametrize(
    "lines, flags, needle",
    [
        (["ab", "cd", "ef"], [], "the val split is empty"),  # 3 lines: 0.8,0.1,0.1 leaves val empty
        (["ab", "cd", "ef", "gh"] * 5, ["--split", "0.01,0.5,0.49"], "the train split is empty"),
    ],
)
def test_an_empty_split_is_one_line_and_exit_2(capsys, tmp_path, lines, flags, needle):
    data = tmp_path / "tiny.txt"
    data.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "train", "-i", data, "-o", tmp_path / "run", *TINY_FLAGS, *flags)
    assert code == 2 and error_lines(err) == [err.strip()] and needle in err, err
    assert "nan" not in out and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------- resume


def test_resume_after_a_time_budget_trains_on_to_a_larger_max_steps(capsys, tmp_path, names_file):
    first = train_tiny(tmp_path, names_file, time_budget=0.3, max_steps=100_000, eval_every=50, patience=0)
    assert first["stopped"] in ("time_budget", "max_steps") and first["step"] < 100_000
    target = first["step"] + 15
    code, out, err = run_cli(capsys, "train", "--resume", tmp_path / "run", "--max-steps", target, "--samples", 0)
    assert code == 0, err
    assert f"stopped: max_steps at step {target}" in out
    assert json.loads((tmp_path / "run" / ckpt.RUN_FILE).read_text())["train_config"]["max_steps"] == target


def test_resume_with_a_larger_time_budget_trains_on(tmp_path, names_file):
    first = train_tiny(tmp_path, names_file, time_budget=0.3, max_steps=100_000, eval_every=50, patience=0)
    again = launch.train(resume=tmp_path / "run", time_budget=first["elapsed"] + 0.5, samples=0)
    assert again["resumed_from"] == first["step"] and again["step"] > first["step"]
    assert again["elapsed"] > first["elapsed"]  # elapsed time is the run's total, carried across the resume


def test_resuming_a_finished_run_says_so_in_one_line_and_exits_0(capsys, tmp_path, names_file):
    train_tiny(tmp_path, names_file, max_steps=10)
    log = (tmp_path / "run" / ckpt.METRICS_FILE).read_text()
    code, out, err = run_cli(capsys, "train", "--resume", tmp_path / "run")
    assert code == 0, err
    assert out.strip() == "stopped: max_steps at step 10; nothing left to do (raise --max-steps to train on)"
    assert (tmp_path / "run" / ckpt.METRICS_FILE).read_text() == log
    result = launch.train(resume=tmp_path / "run", max_steps=12, samples=0)  # ... and a larger limit trains on
    assert result["step"] == 12 and result["message"] is None


def test_resume_removes_temp_files_of_killed_writes(tmp_path, names_file):
    train_tiny(tmp_path, names_file, max_steps=10)
    run = tmp_path / "run"
    for name in (".model.safetensors.k1ll3d.tmp", ".checkpoint.safetensors.x2y3.tmp", ".run.json.abcd.tmp"):
        (run / name).write_bytes(b"half a file")
    launch.train(resume=run, max_steps=15, samples=0)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_resume_refuses_fresh_run_options(tmp_path, names_file):
    train_tiny(tmp_path, names_file, max_steps=5)
    for options, needle in (({"split": "0.5,0.5,0"}, "--split"), ({"lr": "auto"}, "--lr auto is for a fresh run")):
        with pytest.raises(MakemoreError, match=needle):
            launch.train(resume=tmp_path / "run", **options)
    with pytest.raises(MakemoreError, match="cannot change model settings when resuming \\(--n-embd\\)"):
        launch.train(resume=tmp_path / "run", n_embd=8)


# ------------------------------------------------------------------------------------------ run directories


def test_a_failed_count_fit_leaves_nothing_and_a_retry_needs_no_force(capsys, monkeypatch, tmp_path, names_file):
    run = tmp_path / "ng"
    seen = {}

    def failing_fit(self, split, val=None):
        seen["run exists while fitting"] = run.exists()
        raise MakemoreError("--tune-discounts: no val items to tune on")

    monkeypatch.setattr(NGram, "fit", failing_fit)
    argv = ["train", "-i", names_file, "-o", run, "--model", "ngram", "--order", "3", "--samples", "0"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--tune-discounts" in err
    assert seen == {"run exists while fitting": False} and siblings(run) == []
    monkeypatch.undo()
    code, out, err = run_cli(capsys, *argv)  # no --force needed
    assert code == 0 and "stopped: fitted" in out, err
    assert siblings(run) == ["ng"]


def test_a_neural_run_failing_before_its_first_checkpoint_leaves_nothing(capsys, monkeypatch, tmp_path, names_file):
    from makemore.data import batching

    calls = {"n": 0}

    def failing(original):
        def next_batch(self):
            calls["n"] += 1
            if calls["n"] == 3:
                raise MakemoreError("the data went away")
            return original(self)

        return next_batch

    for sampler in (batching.PackedSampler, batching.LengthBucketSampler):
        monkeypatch.setattr(sampler, "next", failing(sampler.next))
    run = tmp_path / "run"
    argv = ["train", "-i", names_file, "-o", run, *TINY_FLAGS, "--max-steps", 20, "--eval-every", 10]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "the data went away" in err
    assert siblings(run) == []
    monkeypatch.undo()
    assert run_cli(capsys, *argv)[0] == 0  # no --force needed


def test_a_new_run_is_loadable_as_soon_as_it_appears(monkeypatch, tmp_path, names_file):
    from makemore.training.trainer import Trainer

    run, seen = tmp_path / "run", {}
    original = Trainer.train

    def look_then_train(self):
        seen["files"] = sorted(p.name for p in run.iterdir())
        ckpt.load_model(run)  # run.json, the splits and (initial) weights: loadable before the first step
        return original(self)

    monkeypatch.setattr(Trainer, "train", look_then_train)
    train_tiny(tmp_path, names_file, max_steps=5)
    assert {ckpt.RUN_FILE, ckpt.WEIGHTS_FILE, "train.txt", "val.txt"} <= set(seen["files"])


def test_force_replaces_the_run_files_and_keeps_others(tmp_path, names_file):
    train_tiny(tmp_path, names_file, max_steps=5)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(MakemoreError, match="already exists; use --force"):
        train_tiny(tmp_path, names_file, max_steps=6)
    result = train_tiny(tmp_path, names_file, max_steps=6, force=True)
    assert result["step"] == 6 and (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "run" / ckpt.RUN_FILE).read_text())["train_config"]["max_steps"] == 6
    assert siblings(tmp_path / "run") == ["run"]


def test_ctrl_c_during_a_closed_form_fit_exits_130_and_leaves_nothing(capsys, monkeypatch, tmp_path, names_file):
    original = NGram.fit

    def fit_interrupted(self, split, val=None):
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C in the middle of a long fit
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the handler must break in: a fit has no steps to stop between
            time.sleep(0.01)
        return original(self, split, val)

    monkeypatch.setattr(NGram, "fit", fit_interrupted)
    run = tmp_path / "ng"
    code, out, err = run_cli(capsys, "train", "-i", names_file, "-o", run, "--model", "ngram", "--order", "3")
    assert code == 130 and "makemore: interrupted" in err and "stopped:" not in out
    assert siblings(run) == []


# --------------------------------------------------------------------------------------------------- lr-find


def test_lr_find_uses_the_threads_asked_for(capsys, monkeypatch, tmp_path, names_file):
    seen = []
    original = lr_finder.find_lr

    def recording_find_lr(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(lr_finder, "find_lr", recording_find_lr)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        argv = ["lr-find", "-i", names_file, "--model", "mlp", "--n-embd", "4", "--n-hidden", "16", "--steps", 12]
        code, _, err = run_cli(capsys, *argv, "--threads", 1, "--out", tmp_path / "lr.png", "--device", "cpu")
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    assert seen == [1] and after == 2  # the sweep ran on 1 thread; the caller's setting is back


# -------------------------------------------------------------------------------------------------- progress


def sample_events(total: int) -> list[dict]:
    train = {"event": "train", "step": 5, "elapsed": 0.5, "train_loss": 2.5, "tokens_per_s": 1234.0}
    evaluation = {"event": "eval", "step": total, "elapsed": 1.0, "val_loss": 2.4, "best_val_loss": 2.4}
    return [train, {"event": "warning", "message": "careful"}, evaluation]


def test_progress_is_plain_lines_without_a_terminal():
    stream = io.StringIO()
    show = progress_printer(10, 0, stream)
    for event in sample_events(10):
        show(event)
    show.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3
    assert lines[0] == "train | 5/10 [0.5s] loss 2.5000, 1,234 tok/s"
    assert lines[1] == "makemore: warning: careful" and lines[2].startswith("eval | 10/10 [1.0s] val 2.4000")


def test_progress_is_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    show = progress_printer(10, 0, stream)
    for event in sample_events(10):
        show(event)
    show.close()
    assert "\r" in stream.getvalue() and "5/10" in stream.getvalue() and "careful" in stream.getvalue()


def test_a_step_count_given_alone_turns_the_recommended_time_budget_off(tmp_path, names_file):
    """The transformer's registry recommends 600 s; --max-steps alone must not let the machine's speed decide."""
    result = launch.train(input=str(names_file), model="transformer", out=str(tmp_path / "run"), samples=0,
                          max_steps=3, eval_every=3, n_layer=1, n_embd=8, n_head=2)  # fmt: skip
    spec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert spec["train_config"]["time_budget"] is None and result["step"] == 3
    with_budget = launch.train(input=str(names_file), model="transformer", out=str(tmp_path / "b"), samples=0,
                               max_steps=3, time_budget=600.0, n_layer=1, n_embd=8, n_head=2)  # fmt: skip
    assert json.loads((tmp_path / "b" / "run.json").read_text())["train_config"]["time_budget"] == 600.0
    assert with_budget["step"] == 3


def test_recommended_row_shards_apply_to_one_cpu_process_only(tmp_path, names_file, monkeypatch):
    tiny = dict(samples=0, max_steps=2, eval_every=2, n_layer=1, n_embd=8, n_head=2)
    launch.train(input=str(names_file), model="transformer", out=str(tmp_path / "cpu"), **tiny)
    assert json.loads((tmp_path / "cpu" / "run.json").read_text())["train_config"]["row_shards"] == 2
    events = []
    launch.train(input=str(names_file), model="transformer", out=str(tmp_path / "fp16"), dtype="fp16",
                 on_event=events.append, **tiny)  # fmt: skip
    assert json.loads((tmp_path / "fp16" / "run.json").read_text())["train_config"]["row_shards"] == 1
    assert not [e for e in events if e["event"] == "warning" and "row-shards" in e["message"]]  # nothing asked
