"""The Python API and CLI around generation: exact best-first search (Run.best, --best), bare strings in Run.score,
Run's repr, stream-mode runs from Python (Run.continue_text, Run.evaluate), and the CLI's up-front refusals."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from conftest import NAMES
from helpers import levenshtein, run_cli

import makemore
from makemore.cli import main
from makemore.cli.generate import build_eval_parser
from makemore.errors import MakemoreError
from makemore.generation.novelty import NoveltyIndex

PROSE = "the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat.\n"


def train(*argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *map(str, argv), "--samples", "0"])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A count bigram on 30 distinct names, cut 80/20 into train and val: the test split is empty."""
    tmp = tmp_path_factory.mktemp("generation_api")
    path = tmp / "names.txt"
    path.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    out = tmp / "run"
    train("-i", path, "--out", out, "--model", "ngram", "--order", 2, "--smoothing", "add-k",
          "--no-tune-discounts", "--split", "0.8,0.2,0")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generation_stream")
    path = tmp / "prose.txt"
    path.write_text(PROSE * 8, encoding="utf-8")
    out = tmp / "run"
    train("-i", path, "--out", out, "--mode", "stream", "--split", "0.8,0.2", "--seq-len", 8, "--model", "ngram",
          "--order", 3, "--smoothing", "add-k")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------- exact search (Run.best)


def test_best_is_exactly_the_k_most_probable_items_and_beam_is_not(run_dir):
    run = makemore.load(run_dir)
    alphabet = "".join(run.vocab.chars)
    every = ["".join(c) for n in range(1, 4) for c in itertools.product(alphabet, repeat=n)]  # items up to 3 characters
    ranked = sorted(run.score(every), key=lambda r: -r["logprob"])
    best = run.best(k=8, max_len=3)
    assert [d["unconstrained_logprob"] for d in best] == pytest.approx([r["logprob"] for r in ranked[:8]], abs=1e-9)
    assert [d["item"] for d in run.best(k=10, max_len=3)][:8] == [d["item"] for d in best]
    beam = run.beam(k=8, max_len=3)  # approximate: never better than exact, position by position
    assert all(b["unconstrained_logprob"] <= e["unconstrained_logprob"] + 1e-9 for b, e in zip(beam, best))


def test_best_takes_constraints_and_filters(run_dir):
    run = makemore.load(run_dir)
    found = run.best(k=5, prefix="a", suffix="a", min_len=3, only_new=True)
    assert len(found) == 5 and all(re.fullmatch("a.+a", d["item"]) and d["status"] == "new" for d in found)
    logprobs = [d["unconstrained_logprob"] for d in found]
    assert logprobs == sorted(logprobs, reverse=True)
    result = run.generate(best=5, regex="a|e")
    assert sorted(d["item"] for d in result.items) == ["a", "e"] and "found 2 of 5" in result.note
    with pytest.raises(MakemoreError, match="not both"):
        run.generate(best=3, beam=3)
    with pytest.raises(MakemoreError, match="max_expansions"):
        run.best(k=3, max_expansions=0)


def test_cli_best_and_its_budget(capsys, run_dir):
    code, out, _ = run_cli(capsys, "sample", run_dir, "--best", 4, "--max-len", 3)
    assert code == 0 and out.split() == [d["item"] for d in makemore.load(run_dir).best(k=4, max_len=3)]
    code, out, err = run_cli(capsys, "sample", run_dir, "--best", 500, "--max-expansions", 20)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--max-expansions" in err and "narrow" in err
    for argv, message in (
        (["--best", 3, "--temperature", 0.5], "--temperature"),
        (["--best", 3, "--beam", 3], "not both"),
        (["--max-expansions", 10], "--best"),
        (["--best", 3, "--beam-width", 4], "--beam"),
    ):
        code, out, err = run_cli(capsys, "sample", run_dir, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, argv


def test_cli_help_says_beam_is_approximate(capsys, run_dir):
    code, out, _ = run_cli(capsys, "sample", "--help")
    assert code == 0 and "approximate" in " ".join(out.split())


# --------------------------------------------------------------------------------------------- Run basics


def test_score_takes_a_bare_string_as_one_item(run_dir):
    run = makemore.load(run_dir)
    [result] = run.score("emma")
    assert result["item"] == "emma" and result == run.score(["emma"])[0]


def test_repr_names_path_model_parameters_and_mode(run_dir, stream_dir):
    text = repr(makemore.load(run_dir))
    assert str(run_dir) in text and "model=ngram" in text and "parameters=" in text and "mode=line" in text
    assert "mode=stream" in repr(makemore.load(stream_dir))


def test_prefix_longer_than_max_len_is_refused_up_front(capsys, run_dir):
    code, out, err = run_cli(capsys, "sample", run_dir, "--prefix", "emmaemma", "--max-len", 4)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--max-len 4" in err
    with pytest.raises(MakemoreError, match="longer than max_len 4"):
        makemore.load(run_dir).sample(prefix="emmaemma", max_len=4)


# ----------------------------------------------------------------------------------------------------- eval


def test_eval_of_an_empty_split_is_a_one_line_error(capsys, run_dir):
    code, out, err = run_cli(capsys, "eval", run_dir, "--split", "test")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "test split is empty" in err
    code, out, _ = run_cli(capsys, "eval", run_dir, "--format", "json")  # all: the splits that have items
    assert code == 0 and set(json.loads(out)) == {"train", "val"}
    assert makemore.load(run_dir).evaluate("val")["val"]["tokens"] > 0


def test_every_eval_flag_has_a_description():
    """In `makemore eval --help`, every argument's entry has text after its name."""
    options = build_eval_parser().format_help().split("options:")[-1]
    entries = re.split(r"\n  (?=-)", "\n" + options)[1:]  # one entry per option, continuation lines included
    names = [entry.split()[0].rstrip(",") for entry in entries]
    assert {"--split", "-i", "--format", "--batch-size", "--device", "--stride"} <= set(names)
    for entry in entries:
        invocation, _, rest = entry.partition("  ")  # argparse puts two spaces (or a newline) before the help
        assert rest.strip() or "\n" in entry.strip(), entry


# -------------------------------------------------------------------------------------------- nearest items


def test_nearest_searches_every_split():
    index = NoveltyIndex(train=["abcdef"], held_out=["zzz"])
    assert index.nearest(["zzy", "zzz", "abcdeg"]) == [("zzz", 1), ("zzz", 0), ("abcdef", 1)]
    assert index.nearest(["zzyy"], max_distance=2) == [("zzz", 2)]


def test_jsonl_nearest_is_the_nearest_item_of_any_split(capsys, run_dir):
    from makemore.runs.checkpoint import read_split_items

    data = read_split_items(run_dir, "train") + read_split_items(run_dir, "val")
    code, out, _ = run_cli(capsys, "sample", run_dir, "-n", 30, "--seed", 3, "--format", "jsonl")
    for record in map(json.loads, out.splitlines()):
        distances = {item: levenshtein(record["item"], item) for item in data}
        assert record["distance"] == min(distances.values())
        assert distances[record["nearest"]] == record["distance"]
    val_item = read_split_items(run_dir, "val")[0]
    assert makemore.load(run_dir).novelty.nearest([val_item]) == [(val_item, 0)]


# ----------------------------------------------------------------------------------------- stream-mode runs


def test_stream_runs_continue_text_from_python_as_the_cli_does(capsys, stream_dir, run_dir):
    run = makemore.load(stream_dir)
    text = run.continue_text("the ", length=40, seed=1)
    assert text.startswith("the ") and len(text) == 44
    assert run.continue_text("the ", length=40, seed=1) == text  # seeded
    assert "".join(run.iter_text("the ", 40, seed=1)) == text[4:]
    code, out, _ = run_cli(capsys, "sample", stream_dir, "--prompt", "the ", "--length", 40, "--seed", 1)
    assert code == 0 and out == text + "\n"
    greedy = run.continue_text("the c", length=5, greedy=True)
    assert greedy == run.continue_text("the c", length=5, greedy=True, seed=7)
    with pytest.raises(MakemoreError, match="continue_text"):
        run.generate(3)
    with pytest.raises(MakemoreError, match="length"):
        run.continue_text("the ", length=0)
    with pytest.raises(MakemoreError, match="line-mode run"):
        makemore.load(run_dir).continue_text("em")


def test_stream_run_evaluate_from_python(stream_dir):
    results = makemore.load(stream_dir).evaluate()
    assert set(results) == {"val"} and results["val"]["tokens"] > 0 and "context" in results["val"]
    with pytest.raises(MakemoreError, match="test split is empty"):
        makemore.load(stream_dir).evaluate("test")
