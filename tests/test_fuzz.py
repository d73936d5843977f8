"""The front door, fuzzed with hypothesis: whatever file, prefix, string or flag value comes in, `makemore` either
works or exits 2 with one line on stderr. Never a traceback, never a hang.

Calls `makemore.cli` in-process (fast); a few subprocess runs check the same from the outside.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from makemore.cli import main

PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")
pytestmark = pytest.mark.slow  # fuzzing: run with `pytest -m slow` (CI does)

FUZZ = settings(
    max_examples=int(os.environ.get("MAKEMORE_FUZZ_EXAMPLES", "25")),  # more for a longer hunt
    deadline=None,
    database=None,  # no .hypothesis directory in the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG_SECONDS = 60
MODELS = {  # tiny settings per model family the foundation ships; other families have their own tests
    "mlp": ["--n-embd", "4", "--n-hidden", "8", "--batch-size", "4"],
    "bigram": ["--batch-size", "4"],
    "ngram": ["--order", "3"],
}


@contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    def hung(signum, frame):
        raise AssertionError(f"no answer after {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def call(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with no_hang():
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    if code in (130, 143):  # a real Ctrl-C / SIGTERM (e.g. `timeout`) reached main(): stop the session too
        raise KeyboardInterrupt
    out, err = capsys.readouterr()
    return code, out, err


def assert_works_or_one_line(code: int, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    assert "Traceback" not in err, err
    assert code in allowed, (code, err)
    if code == 2:
        lines = [line for line in err.split("\n") if line.strip() and "\r" not in line and not PROGRESS.search(line)]
        assert len(lines) == 1 and lines[0].startswith("makemore: error: "), err


# ----------------------------------------------------------------------------------------------- input files

SPECIAL_TEXTS = {
    "emoji": "😀😃\n👩‍👩‍👧‍👦 family\n🇫🇷 flag\nplain\n" * 3,
    "combining marks": "e\u0301\u0301\nn\u0303o\nZ\u0336\u0336a\u0337l\u0338go\n" * 3,
    "right-to-left": "\u05e9\u05dc\u05d5\u05dd\n\u0645\u0631\u062d\u0628\u0627\nabc \u202edcba\n" * 3,
    "10k-char line": "a" * 10_000 + "\nbob\nalice\n",
    "one line": "onlyoneline\n",
    "whitespace only": " \t\n\n   \n\u3000\n",
    "CR and CRLF mix": "anna\r\nbob\rcarl\ndora\r\n\revan\n",
    "BOM": "\ufeffanna\nbob\n\ufeffcarl\n",
    "NUL": "an\x00na\nbob\n",
    "unicode line separators": "anna\u2028bob\u2029carl\x85dora\x0bevan\x0cfred\n",
}


def encode(text: str, bom: bool) -> bytes:
    # surrogatepass turns lone surrogates into the bytes an invalid UTF-8 encoder would write
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass")


lines = st.lists(st.text(st.characters(codec=None, exclude_categories=()), max_size=12), min_size=1, max_size=30)
texts = st.builds(
    lambda parts, newline: newline.join(parts), lines, st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\u2028"])
)
files = st.one_of(
    st.binary(max_size=400),
    st.builds(encode, texts, st.booleans()),
    st.builds(encode, st.sampled_from(sorted(SPECIAL_TEXTS.values())), st.booleans()),
)


@FUZZ
@given(data=files, model=st.sampled_from(sorted(MODELS)), max_item_len=st.sampled_from(["256", "20000", "3"]))
@example(data=SPECIAL_TEXTS["10k-char line"].encode(), model="mlp", max_item_len="20000")
@example(data=SPECIAL_TEXTS["emoji"].encode(), model="mlp", max_item_len="256")
@example(data=SPECIAL_TEXTS["NUL"].encode(), model="bigram", max_item_len="256")
@example(data=b"\xed\xa0\x80abc\n", model="mlp", max_item_len="256")  # an encoded lone surrogate
def test_train_on_any_file_trains_or_says_why(capsys, tmp_path, data, model, max_item_len):
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    argv = ["train", "-i", path, "-o", tmp_path / "run", "--force", "--model", model, *MODELS[model],
            "--max-steps", "2", "--eval-every", "1", "--samples", "2", "--max-item-len", max_item_len,
            "--threads", "1", "--device", "cpu"]  # fmt: skip
    code, out, err = call(capsys, argv)
    assert_works_or_one_line(code, err)
    if code == 0:
        assert "stopped:" in out


# --------------------------------------------------------------------------- sample --prefix, score, eval -i


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-run")
    data = root / "names.txt"
    data.write_text("\n".join(["anna", "bob", "carla", "dave", "eve", "frank", "gina", "hugo", "ines", "jo"] * 4))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-i", str(data), "-o", str(root / "run"), "--model", "mlp", *MODELS["mlp"], "--max-steps",
              "5", "--eval-every", "5", "--samples", "0", "--threads", "1", "--device", "cpu"])  # fmt: skip
    assert exit_info.value.code == 0
    return root / "run"


strings = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=16),
    st.sampled_from(["", "a", "\x00", "\ud800", "😀", "e\u0301", "\u05e9\u05dc\u05d5\u05dd", "a" * 10_000, "anna\n"]),
)
counts = st.sampled_from(["-5", "0", "1", "3", "1e3", "abc", "", "99999999999999999999", "1000000"])
floats = st.sampled_from(["0", "-1", "1e-30", "1e30", "nan", "inf", "-inf", "1", "0.5", "abc", ""])


@FUZZ
@given(prefix=strings)
@example(prefix="an")
@example(prefix="\ud800")
def test_sample_with_any_prefix(capsys, run_dir, prefix):
    code, out, err = call(capsys, ["sample", run_dir, f"--prefix={prefix}", "-n", "3", "--seed", "0"])
    assert_works_or_one_line(code, err, allowed=(0, 1, 2))  # 1: fewer items than asked (a note says why)
    if code == 0:
        assert all(line.startswith(prefix) for line in out.splitlines())


SAMPLE_FLAGS = {"-n": counts, "--max-len": counts, "--temperature": floats, "--top-k": counts, "--top-p": floats,
                "--min-len": counts, "--beam": counts, "--seed": counts}  # fmt: skip


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(sorted(SAMPLE_FLAGS)), st.just(None), min_size=1, max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({flag: SAMPLE_FLAGS[flag] for flag in chosen})))  # fmt: skip
@example(flags={"-n": "99999999999999999999"})
@example(flags={"--max-len": "99999999999999999999"})
@example(flags={"--temperature": "1e-30", "--top-k": "1"})
@example(flags={"--temperature": "1e30"})
@example(flags={"--beam": "1000000"})
def test_sample_with_odd_flag_values(capsys, run_dir, flags):
    argv = ["sample", run_dir]
    for flag, value in flags.items():
        argv.append(f"{flag}={value}")
    code, _, err = call(capsys, argv)
    assert_works_or_one_line(code, err, allowed=(0, 1, 2))


@FUZZ
@given(items=st.lists(strings, min_size=1, max_size=4))
@example(items=["anna", "bob"])
@example(items=["a" * 10_000])
def test_score_any_strings(capsys, run_dir, items):
    code, out, err = call(capsys, ["score", run_dir, "--", *items])
    assert_works_or_one_line(code, err)
    if code == 0:
        assert out.count("logprob") == len(items)


@FUZZ
@given(data=files)
def test_eval_on_any_file(capsys, tmp_path, run_dir, data):
    path = tmp_path / "other.txt"
    path.write_bytes(data)
    code, _, err = call(capsys, ["eval", run_dir, "-i", path])
    assert_works_or_one_line(code, err)


# --------------------------------------------------------------------------------------------- training flags

TRAIN_FLAGS = {
    "--max-steps": counts, "--batch-size": counts, "--eval-every": counts, "--log-every": counts,
    "--lr": floats, "--warmup-steps": counts, "--grad-clip": floats, "--weight-decay": floats,
    "--seed": counts, "--threads": st.sampled_from(["0", "1", "-1", "100000"]), "--samples": counts,
    "--max-item-len": counts, "--split": st.sampled_from(["0.8,0.1,0.1", "1,0,0", "nan,0,0", "0.5,0.5", "a,b,c", ""]),
    "--device": st.sampled_from(["cpu", "meta", "cpu:3", "cuda:99", "tpu", "", "auto"]),
    "--n-embd": counts, "--block-size": counts, "--dropout": floats, "--time-budget": floats,
}  # fmt: skip


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.just(None), min_size=1, max_size=4).flatmap(
    lambda chosen: st.fixed_dictionaries({flag: TRAIN_FLAGS[flag] for flag in chosen})))  # fmt: skip
def test_train_with_odd_flag_values(capsys, tmp_path, flags):
    data = tmp_path / "names.txt"
    data.write_text("\n".join(["anna", "bob", "carla", "dave", "eve", "frank", "gina", "hugo", "ines", "jo"] * 3))
    argv = ["train", "-i", data, "-o", tmp_path / "run", "--force", "--model", "mlp", "--n-hidden", "8"]
    for flag, value in flags.items():
        argv += [flag, value]
    # last, so they win: a huge --max-steps or --samples must not make the test itself slow
    argv += ["--max-steps", "2", "--samples", "2", "--time-budget", "20"]
    code, _, err = call(capsys, argv)
    assert_works_or_one_line(code, err)


# --------------------------------------------------------------------------------------------- from outside


@pytest.mark.parametrize("name", ["emoji"])
def test_real_processes_on_odd_files(tmp_path, name):
    path = tmp_path / "input.txt"
    path.write_bytes(SPECIAL_TEXTS[name].encode("utf-8"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "makemore",
            "train",
            "-i",
            str(path),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--model",
            "bigram",
            "--samples",
            "2",
            "--threads",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONIOENCODING": "ascii", "PATH": "/usr/bin:/bin"},
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 2), result.stderr
