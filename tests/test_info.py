"""`makemore info RUN` and runs.info.describe_run: what a run is, from its files."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import run_cli

from makemore.runs import checkpoint as ckpt
from makemore.runs.info import describe_run


def train(capsys, tmp_path, names_file, name, *flags):
    run = tmp_path / name
    code, _, err = run_cli(capsys, "train", "-i", names_file, "--out", run, "--samples", 0, "--device", "cpu", *flags)
    assert code == 0, err
    return run


def test_describe_a_trained_run(capsys, tmp_path, names_file):
    flags = ["--model", "mlp", "--n-embd", 4, "--n-hidden", 8, "--max-steps", 6, "--eval-every", 3, "--batch-size", 8]
    run = train(capsys, tmp_path, names_file, "mlp", *flags)
    info = describe_run(run)
    _, model = ckpt.load_model(run)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min((e for e in evals if e["event"] == "eval"), key=lambda e: e["val_loss"])
    assert info["model"] == "mlp" and info["model_config"]["n_embd"] == 4
    assert info["parameters"] == model.parameter_count() > 0
    assert info["steps"] == 6 and info["max_steps"] == 6 and not info["closed_form"]
    assert info["best_val_loss"] == pytest.approx(best["val_loss"]) and info["best_step"] == best["step"]
    data = info["data"]
    assert data["sha256"] == hashlib.sha256(names_file.read_bytes()).hexdigest()
    assert data["mode"] == "line" and data["sizes"] == {"train": 72, "val": 9, "test": 9}
    assert data["source"] == str(names_file.resolve())
    json.dumps(info)  # JSON-ready as it is

    code, out, err = run_cli(capsys, "info", run)
    assert code == 0, err
    assert "parameters" in out and f"{model.parameter_count():,}" in out and "6 of 6 steps" in out
    assert f"(step {best['step']})" in out and data["sha256"] in out
    code, out, err = run_cli(capsys, "info", run, "--format", "json")
    assert code == 0 and json.loads(out)["best_step"] == best["step"]


def test_an_ngram_run_shows_the_order_in_use(capsys, tmp_path, names_file):
    run = train(capsys, tmp_path, names_file, "ng", "--model", "ngram", "--order", "auto", "--max-order", 4)
    info = describe_run(run)
    _, model = ckpt.load_model(run)
    assert info["closed_form"] and info["steps"] == 0 and info["max_steps"] is None
    assert info["order"] == model.order and 1 <= info["order"] <= 4  # what fitting chose, not the configured 0
    assert info["best_val_loss"] is not None and info["best_step"] == 0

    spec = json.loads((run / "run.json").read_text())
    spec["fitted"] = {"order": 3}  # what training records for a fitted order
    (run / "run.json").write_text(json.dumps(spec))
    assert describe_run(run)["order"] == 3 and describe_run(run)["fitted"] == {"order": 3}
    code, out, err = run_cli(capsys, "info", run)
    assert code == 0 and "3 (chosen on held-out data by --order auto)" in out and "no training steps" in out, err

    fixed = train(capsys, tmp_path, names_file, "ng2", "--model", "ngram", "--order", 2)
    assert describe_run(fixed)["order"] == 2


def test_info_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", tmp_path / "nope")
    assert code == 2 and err.count("\n") == 1 and "no such run directory" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{")
    code, _, err = run_cli(capsys, "info", tmp_path / "broken")
    assert code == 2 and err.count("\n") == 1 and "corrupt JSON" in err
