import json
import subprocess
import sys

import pytest
from helpers import run_cli

TINY = [
    "--model",
    "mlp",
    "--n-embd",
    "4",
    "--n-hidden",
    "16",
    "--batch-size",
    "8",
    "--eval-every",
    "5",
    "--log-every",
    "5",
    "--samples",
    "3",
]


def test_help_lists_the_model_flags(capsys):
    code, out, _ = run_cli(capsys, "train", "--model", "mlp", "--help")
    assert code == 0 and "--block-size" in out and "--n-hidden" in out and "--max-steps" in out
    code, out, _ = run_cli(capsys, "train", "--model", "ngram", "--help")
    assert code == 0 and "--order" in out and "--block-size" not in out


def test_end_to_end_train_sample_eval_score_resume(capsys, tmp_path, names_file):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "-i", names_file, "--out", run, "--max-steps", 10, *TINY)
    assert code == 0, err
    assert "val: nll" in out and (run / "model.safetensors").exists() and (run / "samples.txt").exists()
    assert "train 72, val 9, test 9 items" in out

    code, out, err = run_cli(capsys, "sample", run, "-n", 5, "--temperature", 0.8, "--seed", 1)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5
    assert run_cli(capsys, "sample", run, "-n", 5, "--temperature", 0.8, "--seed", 1)[1] == out  # seeded

    code, out, err = run_cli(capsys, "eval", run, "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"train", "val", "test"}
    assert result["val"]["tokens"] > 0 and result["val"]["ppl"] == pytest.approx(
        2.718281828 ** result["val"]["nll"], rel=1e-4
    )
    code, out, err = run_cli(capsys, "score", run, "emma", "ava")
    assert code == 0 and out.count("logprob") == 2

    code, out, err = run_cli(capsys, "train", "--resume", run, "--max-steps", 20)
    assert code == 0, err
    assert "resuming at step 10" in out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 20


def test_count_model_fits_in_closed_form(capsys, tmp_path, names_file):
    code, out, err = run_cli(
        capsys, "train", "-i", names_file, "--out", tmp_path / "ng", "--model", "ngram", "--order", 2, "--samples", 0
    )
    assert code == 0, err
    assert "stopped: fitted" in out


def test_datasets_lists_builtins(capsys):
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0 and "first-names" in out and "5163" in out and "88799" in out


def bad_inputs(tmp_path, names_file):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02abc")
    (tmp_path / "latin1.txt").write_bytes("zoë\n".encode("latin-1"))
    (tmp_path / "long.txt").write_text("ok\n" + "x" * 300 + "\n")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("precious")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.json").write_text("{not json")
    return {
        "missing file": ["train", "-i", tmp_path / "nope.txt"],
        "empty file": ["train", "-i", tmp_path / "empty.txt"],
        "binary file": ["train", "-i", tmp_path / "binary.bin"],
        "non-utf8": ["train", "-i", tmp_path / "latin1.txt"],
        "long line": ["train", "-i", tmp_path / "long.txt", "--mode", "line"],
        "unknown model": ["train", "-i", names_file, "--model", "gpt9"],
        "bad flag value": ["train", "-i", names_file, "--lr", "fast"],
        "negative lr": ["train", "-i", names_file, "--lr", "-1"],
        "unknown flag": ["train", "-i", names_file, "--warp-speed"],
        "bad split": ["train", "-i", names_file, "--split", "0.5,0.9,0.1"],
        "existing run": ["train", "-i", names_file, "--out", tmp_path / "existing"],
        "missing run": ["sample", tmp_path / "no-run"],
        "corrupt run": ["eval", tmp_path / "corrupt"],
        "unknown command": ["fly"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "empty file",
        "binary file",
        "non-utf8",
        "long line",
        "unknown model",
        "bad flag value",
        "negative lr",
        "unknown flag",
        "bad split",
        "existing run",
        "missing run",
        "corrupt run",
        "unknown command",
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, names_file, case):
    argv = bad_inputs(tmp_path, names_file)[case]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", tmp_path / "run"]  # were it to train, it must not write into the working directory
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("makemore: error:"), err
    assert "Traceback" not in err
    assert (tmp_path / "existing" / "keep.txt").read_text() == "precious"


def test_unknown_characters_at_sample_and_score_time(capsys, tmp_path, names_file):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "-i", names_file, "--out", run, "--max-steps", 2, *TINY)[0] == 0
    for argv in (["score", run, "emma", "x#z"], ["sample", run, "--prefix", "Q"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "'#'" in err or "'Q'" in err


def test_console_script_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "makemore", "train", "-i", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_preset_sets_defaults_that_flags_still_override(tmp_path, names_file):
    import makemore.cli as cli

    run_dir = tmp_path / "fast"
    argv = ["train", "-i", str(names_file), "--model", "transformer", "--preset", "fast", "--n-embd", "16"]
    assert cli.run(argv + ["--max-steps", "2", "--eval-every", "2", "-o", str(run_dir), "--samples", "0"]) == 0
    spec = json.loads((run_dir / "run.json").read_text())
    assert spec["model_config"]["n_layer"] == 2 and spec["model_config"]["n_embd"] == 16  # preset, then the flag
    # --max-steps given alone is the limit: the preset's 90 s budget is off, so the run's length is the machine's
    assert spec["train_config"]["time_budget"] is None and spec["train_config"]["max_steps"] == 2
    assert spec["train_config"]["batch_size"] == 64
    result = subprocess.run(
        [sys.executable, "-m", "makemore", "train", "-i", str(names_file), "--model", "mlp", "--preset", "fast"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_misspelt_command_or_flag_gets_a_did_you_mean(capsys):
    code, _, err = run_cli(capsys, "trian")
    assert code == 2 and err == "makemore: error: unknown command 'trian'; did you mean 'train'?\n"
    code, _, err = run_cli(capsys, "fly")
    assert code == 2 and "choose from" in err and "did you mean" not in err
    code, _, err = run_cli(capsys, "train", "--max-stpes", "3")
    assert code == 2 and err.count("\n") == 1 and "did you mean --max-steps" in err  # a model flag
    code, _, err = run_cli(capsys, "plot", "los", "run")
    assert code == 2 and err.count("\n") == 1 and "did you mean loss?" in err


def test_help_lists_the_choices_of_every_option_that_has_them(capsys):
    code, out, _ = run_cli(capsys, "train", "--model", "ngram", "--help")
    assert code == 0
    for shown in (
        "--optimizer {adamw,sgd}",
        "--schedule {cosine,step,constant}",
        "--dtype {fp32,bf16,fp16}",
        "--smoothing {kneser-ney,add-k}",
        "--order INT|auto",
    ):
        assert shown in out, shown


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "mlp", "--n-embd", "0"], "--n-embd must be >= 1, got 0"),
        (["--model", "rnn", "--n-layer", "0"], "--n-layer must be >= 1, got 0"),
        (["--model", "wavenet", "--n-hidden", "0"], "--n-hidden must be in 1..65536, got 0"),
        (["--model", "ngram", "--max-order", "99"], "--max-order must be in 1.."),
        (["--model", "bigram", "--l2", "-1"], "--l2 must be >= 0, got -1.0"),
    ],
)
def test_config_errors_name_the_flag(capsys, tmp_path, names_file, flags, message):
    code, _, err = run_cli(capsys, "train", "-i", names_file, "--out", tmp_path / "run", *flags)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "run.json").exists()
