"""Labels: labelled data, conditional models of every kind, blends, classification, per-label evaluation."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch
from helpers import run_cli

import makemore
from makemore.data.labels import LabelledSplit, parse_labelled, read_labelled, stratified_split
from makemore.data.lines import IGNORE, Vocab
from makemore.errors import MakemoreError
from makemore.generation.classify import conditioned, label_logprobs, posteriors
from makemore.models import MODELS, build_model
from makemore.models.labels import Conditioned, Guided
from makemore.models.ngram_labels import LabelledNGram


def toy_items(n: int = 30, seed: int = 0) -> list[tuple[str, str]]:
    """Two trivially separable labels: 'ab' items use only a and b, 'xy' items only x and y."""
    rng = random.Random(seed)
    rows = []
    for label, chars in (("ab", "ab"), ("xy", "xy")):
        for _ in range(n):
            rows.append((label, "".join(rng.choice(chars) for _ in range(rng.randint(3, 6)))))
    return rows


@pytest.fixture
def toy_file(tmp_path):
    path = tmp_path / "toy.tsv"
    path.write_text("".join(f"{label}\t{item}\n" for label, item in toy_items()), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------------ data


def test_parse_labelled_reads_label_tab_item_lines():
    items, labels = parse_labelled("f\temma\n\nm\tliam\nf\t ava \nm\tnoah\n", "x.tsv", 256)
    assert items == ["emma", "liam", "ava", "noah"]
    assert labels == ["f", "m", "f", "m"]


@pytest.mark.parametrize(
    "text, line",
    [
        ("f\temma\nf\tava\nliam\nm\tnoah\n", 3),  # no tab
        ("f\temma\nf\tava\n\tliam\nm\tnoah\n", 3),  # empty label
        ("f\temma\n\nf\tava\nm\tnoah\n", 4),  # a label with one item: named at its line
    ],
)
def test_bad_labelled_input_names_the_line(text, line):
    with pytest.raises(MakemoreError, match=f"line {line}"):
        parse_labelled(text, "x.tsv", 256)


def test_bad_labelled_input_is_exit_2_with_the_line_number(tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("f\temma\nf\tava\nm\tliam\nnoah\nm\tluke\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "train", "-i", path, "--labelled", "--model", "ngram", "-o", tmp_path / "r")
    assert code == 2
    assert "line 4" in err and "tab" in err and len(err.strip().splitlines()) == 1


def test_several_files_are_labelled_by_their_stems(tmp_path):
    (tmp_path / "female.txt").write_text("emma\nava\nmia\n", encoding="utf-8")
    (tmp_path / "male.txt").write_text("liam\nnoah\n", encoding="utf-8")
    items, labels, _ = read_labelled([str(tmp_path / "female.txt"), str(tmp_path / "male.txt")], 256)
    assert list(zip(labels, items)) == [("female", "emma"), ("female", "ava"), ("female", "mia")] + [
        ("male", "liam"),
        ("male", "noah"),
    ]
    (tmp_path / "solo.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(MakemoreError, match="line 1.*only one item"):
        read_labelled([str(tmp_path / "female.txt"), str(tmp_path / "solo.txt")], 256)


def test_stratified_split_keeps_each_labels_share_and_every_item():
    items = [f"a{i}" for i in range(80)] + [f"b{i}" for i in range(20)]
    labels = ["a"] * 80 + ["b"] * 20
    splits = stratified_split(items, labels, (0.8, 0.1, 0.1), seed=3)
    assert {name: Counter(split[1]) for name, split in splits.items()} == {
        "train": {"a": 64, "b": 16},
        "val": {"a": 8, "b": 2},
        "test": {"a": 8, "b": 2},
    }
    assert sorted((item, label) for split in splits.values() for item, label in zip(*split)) == sorted(
        zip(items, labels)
    )
    assert stratified_split(items, labels, (0.8, 0.1, 0.1), seed=3) == splits  # seeded
    for split in splits.values():  # each item still carries its own label
        assert all(item[0] == label for item, label in zip(*split))


def test_labelled_split_rows_start_with_the_label_token():
    vocab = Vocab(list("abxy"))
    split = LabelledSplit(["ab", "xyx"], [1, 0], vocab)
    x, y = split.rows(torch.tensor([0, 1]))
    assert x.tolist() == [[vocab.size + 1, 1, 2, 0], [vocab.size + 0, 3, 4, 3]]
    assert y.tolist() == [[1, 2, 0, IGNORE], [3, 4, 3, 0]]
    assert split.tokens == 7


# -------------------------------------------------------------------------------------------------------- models


def test_no_labels_builds_exactly_the_unlabelled_model():
    for name in ("gru", "mlp", "transformer"):
        torch.manual_seed(0)
        plain = build_model(name, MODELS[name].config_class(), 12)
        torch.manual_seed(0)
        again = build_model(name, MODELS[name].config_class(), 12, n_labels=0)
        assert plain.state_dict().keys() == again.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize(
    "name, mode",
    [("gru", "add"), ("lstm", "concat"), ("rnn", "state"), ("mlp", "concat"), ("transformer", "state"),
     ("wavenet", "add"), ("bigram", "add")],
)  # fmt: skip
def test_every_family_reads_the_label(name, mode):
    torch.manual_seed(0)
    model = build_model(name, MODELS[name].config_class(), 6, n_labels=2, label_mode=mode).eval()
    with torch.no_grad():
        for p in model.parameters():  # a fresh model may be near-uniform; make the label matter
            p.add_(torch.randn_like(p) * 0.3)
    idx = torch.tensor([[6, 1, 2, 3], [7, 1, 2, 3]])  # the same characters under label 0 and label 1
    logits, _ = model(idx)
    assert not torch.allclose(logits[0], logits[1])


def test_conditional_ngram_sums_to_one_per_context_and_label():
    vocab = Vocab(list("abxy"))
    rows = toy_items(20)
    split = LabelledSplit([item for _, item in rows], [int(label == "xy") for label, _ in rows], vocab)
    val = LabelledSplit(["abab", "xyxy", "aab", "yyx"], [0, 1, 0, 1], vocab)
    model = LabelledNGram(MODELS["ngram"].config_class(order=3), vocab.size, 2)
    model.fit(split, val)
    contexts = torch.randint(1, vocab.size, (8, 5))
    for label in (0, 1):
        idx = torch.cat([torch.full((8, 1), vocab.size + label), contexts], dim=1)
        probs = model(idx)[0].double().exp()
        assert torch.allclose(probs.sum(-1), torch.ones(8, 6, dtype=torch.float64), atol=1e-5)
    assert 0 <= float(model.label_weights.min()) and float(model.label_weights.max()) <= 1


# --------------------------------------------------------------------------------------------- runs, end to end


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """A conditional GRU and n-gram trained on the separable toy set (the GRU briefly: small and fast)."""
    root = tmp_path_factory.mktemp("labels")
    path = root / "toy.tsv"
    path.write_text("".join(f"{label}\t{item}\n" for label, item in toy_items()), encoding="utf-8")
    gru = makemore.train(
        str(path), "gru", root / "gru", labelled=True, max_steps=150, n_embd=16, n_hidden=32, n_layer=1,
        dropout=0.0, lr=1e-2, batch_size=16, eval_every=150, samples=3, time_budget=None,
    )  # fmt: skip
    ngram = makemore.train(str(path), "ngram", root / "ngram", labelled=True, samples=3, order=3, tune_discounts=False)
    return root, gru, ngram


@pytest.mark.parametrize("family", ["gru", "ngram"])
def test_a_conditional_model_separates_a_trivially_separable_set(toy_runs, family):
    root = toy_runs[0]
    run = makemore.load(root / family)
    assert run.labels == ["ab", "xy"]
    items = [item for _, item in toy_items()]
    truth = [label for label, _ in toy_items()]
    results = run.classify(items)
    assert [r["label"] for r in results] == truth  # 100%
    for r in results:
        assert math.isclose(sum(r["probs"].values()), 1.0, rel_tol=1e-9)
    report = run.evaluate_labels("val")["val"]
    assert report["accuracy"] == 1.0 and report["nll"] < report["unconditional_nll"]
    assert sum(map(sum, report["confusion"])) == report["items"]


def test_samples_follow_their_label(toy_runs):
    run = makemore.load(toy_runs[0] / "gru")
    for label, chars in (("ab", set("ab")), ("xy", set("xy"))):
        items = run.generate(40, label=label, seed=1).items
        assert all(item["label"] == label for item in items)
        share = sum(set(item["item"]) <= chars for item in items) / len(items)
        assert share >= 0.9, (label, share)


def test_blend_weights_one_and_zero_equal_plain_conditioning(toy_runs):
    run = makemore.load(toy_runs[0] / "gru")
    plain = [i["item"] for i in run.generate(20, label="ab", seed=5).items]
    blended = [i["item"] for i in run.generate(20, label="ab=1.0,xy=0.0", seed=5).items]
    assert plain == blended
    idx = torch.tensor([[0, 1, 2, 1]])
    one = Conditioned(run.base_model, torch.tensor([1.0, 0.0]))(idx)[0]
    direct = run.base_model(torch.tensor([[run.vocab.size, 1, 2, 1]]))[0]
    assert torch.equal(one, direct)
    # a real blend lies between the two labels, and exact top-K works under a label
    best = run.generate(best=3, label="xy").items
    assert len(best) == 3 and all(set(i["item"]) <= set("xy") for i in best)
    assert run.generate(5, label="ab=0.5,xy=0.5", seed=2, blend="embedding").items


def test_unconditional_probability_is_the_sum_over_labels(toy_runs):
    run = makemore.load(toy_runs[0] / "gru")
    items = ["abab", "xyy", "ax"]
    logprobs, _ = label_logprobs(run.base_model, run.vocab, items, 2)
    prior = torch.tensor([0.5, 0.5], dtype=torch.float64)  # the toy set's labels are balanced
    expected = torch.logsumexp(logprobs + prior.log(), dim=1)
    scored = torch.tensor([r["logprob"] for r in run.score(items)], dtype=torch.float64)
    assert torch.allclose(scored, expected, atol=1e-4)
    assert torch.allclose(posteriors(logprobs, prior.tolist()).sum(1), torch.ones(3, dtype=torch.float64))


def test_cli_sample_classify_eval_with_labels(toy_runs, capsys):
    root = toy_runs[0]
    code, out, _ = run_cli(
        capsys, "sample", root / "gru", "--label", "xy", "-n", "5", "--seed", "0", "--format", "jsonl"
    )
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 5 and all(r["label"] == "xy" for r in records)
    code, out, _ = run_cli(capsys, "classify", root / "ngram", "abba", "yxy", "--format", "jsonl")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["item"], r["label"]) for r in records] == [("abba", "ab"), ("yxy", "xy")]
    assert all(math.isclose(sum(r["probs"].values()), 1.0, rel_tol=1e-6) for r in records)
    code, out, _ = run_cli(capsys, "eval", root / "ngram", "--split", "val")
    assert code == 0 and "classification accuracy 1.0000" in out and "confusion" in out
    code, _, err = run_cli(capsys, "sample", root / "gru", "--label", "zz")
    assert code == 2 and "not a label" in err


def test_label_on_an_unlabelled_run_is_an_error(tmp_path, capsys, names_file):
    makemore.train(str(names_file), "ngram", tmp_path / "plain", order=2, tune_discounts=False, samples=0)
    code, _, err = run_cli(capsys, "sample", tmp_path / "plain", "--label", "f")
    assert code == 2 and "without labels" in err
    code, _, err = run_cli(capsys, "classify", tmp_path / "plain", "emma")
    assert code == 2 and "without labels" in err


def test_constraints_and_novelty_filters_work_under_a_label(toy_runs):
    run = makemore.load(toy_runs[0] / "gru")
    items = run.generate(10, label="xy", suffix="yx", only_new=True, unique=True, seed=3, max_attempts=5000).items
    assert items and all(i["item"].endswith("yx") and i["status"] == "new" for i in items)
    assert len({i["item"] for i in items}) == len(items)
    best = run.generate(best=2, label="ab", prefix="ba").items
    assert [i["item"][:2] for i in best] == ["ba", "ba"] and best[0]["logprob"] >= best[1]["logprob"]


def test_files_per_label_train_and_resume(tmp_path, capsys):
    rows = toy_items(12)
    for label in ("ab", "xy"):
        (tmp_path / f"{label}.txt").write_text("".join(i + "\n" for lab, i in rows if lab == label), encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", "-i", tmp_path / "ab.txt", "-i", tmp_path / "xy.txt", "--labelled", "--model", "mlp"]
    code, out, err = run_cli(capsys, *argv, "-o", run, "--max-steps", 20, "--samples", 0, "--label-mode", "concat")
    assert code == 0, err
    assert "labels: ab 10/1/1, xy 10/1/1 (train/val/test)" in out  # stratified, counts printed
    spec = json.loads((run / "run.json").read_text())
    assert spec["data"]["labels"] == ["ab", "xy"] and spec["data"]["label_mode"] == "concat"
    assert spec["train_config"]["ema"] == 0.999  # labelled runs average their weights unless told otherwise
    assert (run / "train.labels.txt").read_text().count("\n") == 20
    code, out, err = run_cli(capsys, "train", "--resume", run, "--max-steps", 30, "--samples", 0)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "-i", tmp_path / "ab.txt", "-i", tmp_path / "xy.txt", "--model", "mlp")
    assert code == 2 and "--labelled" in err


def test_the_built_in_labelled_dataset_lists_each_name_under_its_lists():
    items, labels, _ = read_labelled(["first-names-by-sex"], 256)
    counts = Counter(labels)
    assert counts == {"female": 4275, "male": 1219}
    both = {i for i, lab in zip(items, labels) if lab == "female"} & {
        i for i, lab in zip(items, labels) if lab == "male"
    }
    assert len(both) == 331 and "jean" in both  # a name on both lists is under both


def test_plot_confusion_and_label_embeddings(toy_runs, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    root = toy_runs[0]
    code, out, err = run_cli(capsys, "plot", "confusion", root / "gru", "--out", tmp_path / "c.png")
    assert code == 0, err
    assert (tmp_path / "c.png").stat().st_size > 1000
    code, out, err = run_cli(capsys, "plot", "embeddings", root / "gru", "--out", tmp_path / "e.png")
    assert code == 0, err


@pytest.mark.parametrize("name, mode", [("transformer", "add"), ("transformer", "state"), ("wavenet", "add")])
def test_packed_rows_of_labelled_items_read_each_item_with_its_own_label(name, mode):
    torch.manual_seed(0)
    config = MODELS[name].config_class(dropout=0.0) if name == "transformer" else MODELS[name].config_class()
    model = build_model(name, config, 6, n_labels=2, label_mode=mode).eval()
    with torch.no_grad():
        model.label_emb.table.weight.mul_(50.0)  # make the labels matter
    a, b = [6, 1, 2, 3], [7, 4, 5]  # item "abc" under label 0, "de" under label 1
    packed = model(torch.tensor([a + b]))[0][0]
    alone = torch.cat([model(torch.tensor([a]))[0][0], model(torch.tensor([b]))[0][0]])
    assert torch.allclose(packed, alone, atol=1e-4)
    assert model.packable


# --------------------------------------------------------------------------------------------------- guidance


@pytest.fixture(scope="module")
def overlapping_run(tmp_path_factory):
    """A labelled n-gram on two labels that overlap: 'a' items are 60% a's, 'b' items 40% (the rest b's)."""
    rng = random.Random(3)
    rows = [
        (label, "".join("a" if rng.random() < share else "b" for _ in range(rng.randint(4, 7))))
        for label, share in (("a", 0.6), ("b", 0.4))
        for _ in range(300)
    ]
    path = tmp_path_factory.mktemp("overlap") / "overlap.tsv"
    path.write_text("".join(f"{label}\t{item}\n" for label, item in rows), encoding="utf-8")
    makemore.train(str(path), "ngram", path.parent / "run", labelled=True, samples=0, order=2, tune_discounts=False)
    return makemore.load(path.parent / "run")


def classified_as(run, label: str, guidance: float | None) -> float:
    items = run.sample(400, seed=0, label=label, label_guidance=guidance)
    return sum(r["label"] == label for r in run.classify(items)) / len(items)


def test_label_guidance_draws_items_more_typical_of_the_label(overlapping_run):
    for label in ("a", "b"):
        shares = [classified_as(overlapping_run, label, w) for w in (0.0, 1.0, 3.0)]
        assert shares[0] + 0.05 < shares[1] < shares[2], (label, shares)
    assert classified_as(overlapping_run, "a", None) == classified_as(overlapping_run, "a", 1.5)  # the default


def test_no_guidance_is_exactly_the_conditional_model(overlapping_run):
    run = overlapping_run
    unguided = conditioned(run.base_model, run.spec.data, "a", guidance=0.0)
    guided = conditioned(run.base_model, run.spec.data, "a", guidance=1.0)
    zero = Guided(run.base_model, 0, torch.tensor([0.5, 0.5]), guidance=0.0)
    idx = torch.tensor([[0, 1, 2, 1, 1]])
    plain = torch.log_softmax(unguided(idx)[0].double(), -1)
    assert torch.allclose(torch.log_softmax(zero(idx)[0].double(), -1), plain, atol=1e-6)
    assert not torch.allclose(torch.log_softmax(guided(idx)[0].double(), -1), plain, atol=1e-3)
    # scoring is never guided: score given a label is log p(item | label)
    assert run.score(["abab"], label="a")[0]["logprob"] == pytest.approx(
        float(label_logprobs(run.base_model, run.vocab, ["abab"], 2)[0][0, 0]), abs=1e-6
    )


def test_label_guidance_errors_are_one_line(overlapping_run, capsys):
    path = overlapping_run.path
    for flags, needle in (
        (["--label", "a=0.5,b=0.5", "--label-guidance", "1"], "one label, not a blend"),
        (["--label-guidance", "1"], "give a --label"),
        (["--label", "a", "--label-guidance", "-1"], ">= 0"),
    ):
        code, _, err = run_cli(capsys, "sample", path, "-n", "3", *flags)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (flags, err)
