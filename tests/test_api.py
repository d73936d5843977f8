"""The Python API (makemore.load -> Run) and the `sample` / `score` commands built on it; the novelty index."""

from __future__ import annotations

import json
import random
import re

import pytest
from conftest import NAMES
from helpers import levenshtein, run_cli

import makemore
import makemore.errors
from makemore.cli import main
from makemore.generation.novelty import NoveltyIndex


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A count bigram on the conftest names (closed form: instant), as a run directory."""
    names = NAMES[:22]
    tmp = tmp_path_factory.mktemp("api")
    path = tmp / "names.txt"
    path.write_text("\n".join(names * 3) + "\n", encoding="utf-8")
    out = tmp / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "-i",
                str(path),
                "--out",
                str(out),
                "--model",
                "ngram",
                "--order",
                "2",
                "--smoothing",
                "add-k",
                "--no-tune-discounts",
                "--samples",
                "0",
            ]
        )
    assert exit_info.value.code == 0
    return out


def test_load_sample_score_return_plain_data(run_dir):
    run = makemore.load(run_dir)
    items = run.sample(n=10, prefix="e", temperature=0.8, seed=0)
    assert len(items) == 10 and all(isinstance(s, str) and s.startswith("e") for s in items)
    assert run.sample(n=10, prefix="e", temperature=0.8, seed=0) == items  # seeded
    details = run.sample(n=3, suffix="a", seed=1, details=True)
    assert {"item", "logprob", "unconstrained_logprob", "char_logprobs", "status", "nearest", "distance"} <= set(
        details[0]
    )
    assert all(d["item"].endswith("a") and d["logprob"] >= d["unconstrained_logprob"] for d in details)
    json.dumps(details)  # plain Python data
    scores = run.score(["emma", "xqz" if "x" in run.vocab.stoi else "mmmm"])
    assert scores[0]["logprob"] > scores[1]["logprob"]
    assert scores[0]["logprob"] == pytest.approx(sum(lp for _, lp in scores[0]["char_logprobs"]))
    best = run.beam(k=3, prefix="em")
    assert len(best) == 3 and best[0]["unconstrained_logprob"] >= best[-1]["unconstrained_logprob"]


def test_filters_only_new_unique_exclude_min_distance(run_dir):
    run = makemore.load(run_dir)
    train = set(run.novelty.train_list)
    new = run.sample(n=15, only_new=True, unique=True, seed=2, details=True)
    assert len(new) == 15 and len({d["item"] for d in new}) == 15
    assert all(d["status"] == "new" and d["item"] not in train for d in new)
    taken = {d["item"] for d in new[:5]}
    again = run.sample(n=15, only_new=True, seed=2, exclude=taken)
    assert not taken & set(again)
    far = run.sample(n=8, min_distance=2, seed=3, details=True)
    data = train | run.novelty.held_out  # distances are to the items of every split
    for d in far:
        nearest = min(levenshtein(d["item"], t) for t in data)
        assert nearest >= 2 and d["distance"] == nearest


def test_shortfall_is_reported_not_raised(run_dir):
    run = makemore.load(run_dir)
    result = run.generate(5, regex="a|e", unique=True, seed=0)  # only two such items exist
    assert sorted(item["item"] for item in result.items) == ["a", "e"]
    assert result.note and "found 2 of 5" in result.note and "duplicate" in result.note
    result = run.generate(5, regex="ab", min_len=3)
    assert result.items == [] and "found 0 of 5" in result.note


def test_novelty_index_matches_brute_force():
    rng = random.Random(0)
    train = ["".join(rng.choice("abcd") for _ in range(rng.randint(1, 7))) for _ in range(300)]
    queries = ["".join(rng.choice("abcde") for _ in range(rng.randint(0, 9))) for _ in range(60)] + train[:5]
    index = NoveltyIndex(train, held_out=["zz"])
    for query, (match, distance) in zip(queries, index.nearest(queries)):
        truth = min(levenshtein(query, t) for t in train)
        assert distance == truth and levenshtein(query, match) == truth
    for bound in (0, 1, 2):
        for query, (match, distance) in zip(queries, index.nearest(queries, max_distance=bound)):
            truth = min(levenshtein(query, t) for t in train)
            assert (distance, match is None) == ((truth, False) if truth <= bound else (bound + 1, True))
    assert index.status(train[0]) == "in-train" and index.status("zz") == "in-val-test" and index.status("e") == "new"
    assert NoveltyIndex([]).nearest(["abc"]) == [(None, 1 << 30)]


def test_cli_sample_formats_out_file_and_exit_codes(capsys, tmp_path, run_dir):
    code, out, err = run_cli(capsys, "sample", run_dir, "-n", 4, "--seed", 0)
    plain = out.splitlines()
    assert code == 0 and len(plain) == 4 and all(" " not in line for line in plain)  # plain: items alone
    code, out, _ = run_cli(capsys, "sample", run_dir, "-n", 4, "--seed", 0, "--format", "text")
    assert [line.split()[0] for line in out.splitlines()] == plain
    assert all(line.split()[-1] in ("new", "in-train", "in-val-test") for line in out.splitlines())
    code, out, _ = run_cli(
        capsys,
        "sample",
        run_dir,
        "-n",
        3,
        "--seed",
        0,
        "--format",
        "jsonl",
        "--prefix",
        "a",
        "--regex",
        "a[a-z]*a",
        "--max-len",
        8,
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert all(re.fullmatch("a[a-z]*a", r["item"]) and len(r["item"]) <= 8 for r in records)
    assert all(r["char_logprobs"][-1][0] == "<end>" and "unconstrained_logprob" in r for r in records)
    target = tmp_path / "names.out"
    code, out, err = run_cli(capsys, "sample", run_dir, "--beam", 5, "--out", target)
    assert code == 0 and out == "" and "wrote 5 items" in err and len(target.read_text().splitlines()) == 5
    code, out, err = run_cli(capsys, "sample", run_dir, "--regex", "ab", "--min-len", 3)
    assert code == 1 and out == "" and "found 0 of 20" in err
    code, out, err = run_cli(capsys, "sample", run_dir, "-n", 5, "--regex", "a|e", "--unique", "--seed", 0)
    assert code == 0 and sorted(out.split()) == ["a", "e"] and "found 2 of 5" in err
    exclude = tmp_path / "taken.txt"
    exclude.write_text("a\n\n")
    code, out, _ = run_cli(capsys, "sample", run_dir, "-n", 5, "--regex", "a|e", "--exclude-file", exclude)
    assert code == 0 and set(out.split()) == {"e"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prefix", "Q"], "'Q'"),
        (["--charset", "a#"], "'#'"),
        (["--regex", "[A-C]x"], "'A' 'B' 'C'"),
        (["--regex", "a("], "invalid regular expression"),
        (["--beam", 3, "--temperature", 0.5], "--temperature"),
        (["--length-penalty", 1], "--beam"),
        (["--min-distance", 0], "min_distance"),
    ],
)
def test_cli_sample_bad_input_is_one_line(capsys, run_dir, argv, message):
    code, out, err = run_cli(capsys, "sample", run_dir, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_score_file_sort_formats(capsys, tmp_path, run_dir):
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("emma\n\nmmmmmm\nava\nem#ma\n")
    code, _, err = run_cli(capsys, "score", run_dir, "--file", candidates)
    assert code == 2 and "line 5" in err and "'#'" in err
    code, out, err = run_cli(
        capsys, "score", run_dir, "--file", candidates, "--skip-unknown", "--sort", "--format", "tsv"
    )
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["item", "logprob", "nll_per_token"] and "skipped 1" in err
    nll = [float(r[2]) for r in rows[1:]]
    assert nll == sorted(nll) and {r[0] for r in rows[1:]} == {"emma", "mmmmmm", "ava"}
    code, out, _ = run_cli(
        capsys,
        "score",
        run_dir,
        "ava",
        "--file",
        candidates,
        "--skip-unknown",
        "--sort",
        "logprob",
        "--reverse",
        "--format",
        "jsonl",
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4 and [r["logprob"] for r in records] == sorted(r["logprob"] for r in records)
    code, out, _ = run_cli(capsys, "score", run_dir, "emma")
    assert code == 0 and "logprob" in out and "e:" in out
    code, _, err = run_cli(capsys, "score", run_dir)
    assert code == 2 and "nothing to score" in err


def test_beam_with_filters_and_particles(run_dir):
    run = makemore.load(run_dir)
    best = run.beam(k=4, only_new=True, min_len=3)
    assert len(best) == 4 and all(d["status"] == "new" and len(d["item"]) >= 3 for d in best)
    assert [d["score"] for d in best] == sorted((d["score"] for d in best), reverse=True)
    items = run.sample(n=6, suffix="la", particles=8, seed=0, temperature=0.9)
    assert len(items) == 6 and all(s.endswith("la") for s in items)
    assert run.sample(n=6, suffix="la", particles=8, seed=0, temperature=0.9) == items
    with pytest.raises(makemore.errors.MakemoreError, match="particles"):
        run.sample(n=2, particles=4, top_k=3)


def exact_conditional(run, spec_test, max_len: int) -> dict[str, float]:
    """p(x | constraint) for every string over the run's alphabet up to max_len, by enumeration."""
    import itertools
    import math

    from makemore.generation.scoring import score_items

    alphabet = run.vocab.chars
    strings = ["".join(c) for n in range(1, max_len + 1) for c in itertools.product(alphabet, repeat=n)]
    possible = [s for s in strings if spec_test(s)]
    scores = {r["item"]: math.exp(r["logprob"]) for r in score_items(run.model, run.vocab, possible)}
    total = sum(scores.values())
    return {item: p / total for item, p in scores.items()}


def test_rejection_draws_exactly_from_the_model_conditioned_on_the_constraint(run_dir):
    from collections import Counter

    run = makemore.load(run_dir)
    exact = exact_conditional(run, lambda s: s.endswith("a") and s.startswith("m"), 4)
    n = 3000

    def distance(conditioning: str) -> float:
        result = run.generate(n, suffix="a", prefix="m", max_len=4, seed=0, conditioning=conditioning,
                              nearest=False, logprobs=False)  # fmt: skip
        items = [item["item"] for item in result.items]
        assert len(items) == n and all(i.startswith("m") and i.endswith("a") and len(i) <= 4 for i in items)
        counts = Counter(items)
        return 0.5 * sum(abs(counts[item] / n - p) for item, p in exact.items())  # total variation

    rejected, masked = distance("reject"), distance("mask")
    assert rejected < 0.06 < masked  # measured: 0.031 and 0.367; sampling noise alone is about 0.03 here


def test_auto_conditioning_rejects_then_masks_when_the_constraint_is_rare(run_dir):
    run = makemore.load(run_dir)
    common = run.generate(20, suffix="a", seed=1, nearest=False)
    assert common.note is None and common.rejected.get("constraint not met (rejection)", 0) > 0
    rare = run.generate(5, regex="vv.*bb", seed=1, nearest=False, max_len=12)  # pairs the names never have
    assert len(rare.items) == 5 and all(re.fullmatch("vv.*bb", item["item"]) for item in rare.items)
    assert "by masking" in rare.note
    with pytest.raises(makemore.errors.MakemoreError, match="conditioning"):
        run.generate(2, suffix="a", conditioning="guess")
