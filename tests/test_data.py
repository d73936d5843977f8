import math

import pytest
import torch

from makemore.data.batching import LengthBucketSampler
from makemore.data.lines import (
    BOUNDARY,
    IGNORE,
    LineSplit,
    Vocab,
    parse_fractions,
    parse_items,
    read_items,
    split_items,
)
from makemore.errors import MakemoreError
from makemore.models import MODELS, build_model
from makemore.training.evaluation import evaluate


def test_vocab_round_trip_with_dots_spaces_and_non_ascii():
    items = ["a.b", "mary ann", "zoë", "日本", "."]
    vocab = Vocab.from_texts(items)
    for item in items:
        ids = vocab.encode(item)
        assert BOUNDARY not in ids
        assert vocab.decode(ids) == item
    assert vocab.size == len(set("".join(items))) + 1


def test_unknown_characters_are_named():
    vocab = Vocab.from_texts(["abc"])
    with pytest.raises(MakemoreError, match="'z'"):
        vocab.encode("abz")


def test_targets_and_mask_for_a_tiny_file():
    vocab = Vocab.from_texts(["ab", "c"])
    split = LineSplit(["ab", "c"], vocab)
    a, b, c = vocab.stoi["a"], vocab.stoi["b"], vocab.stoi["c"]
    assert split.inputs.tolist() == [[BOUNDARY, a, b], [BOUNDARY, c, BOUNDARY]]
    assert split.targets.tolist() == [[a, b, BOUNDARY], [c, BOUNDARY, IGNORE]]
    assert split.lengths.tolist() == [3, 2]
    assert split.tokens == 5


def test_parse_items_strips_drops_blanks_keeps_duplicates_and_crlf():
    text = "\ufeffemma\r\n  ava \r\n\r\nemma\n   \n"
    assert parse_items(text.lstrip("\ufeff"), "x", 256) == ["emma", "ava", "emma"]


def test_read_items_bom_and_errors(tmp_path):
    good = tmp_path / "bom.txt"
    good.write_bytes(b"\xef\xbb\xbfemma\r\nava\r\n")
    assert read_items(str(good))[0] == ["emma", "ava"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("zoë\n".encode("latin-1"))
    with pytest.raises(MakemoreError, match="not valid UTF-8 \\(line 1"):
        read_items(str(bad))
    with pytest.raises(MakemoreError, match="NUL"):
        (tmp_path / "bin").write_bytes(b"ab\x00cd")
        read_items(str(tmp_path / "bin"))
    with pytest.raises(MakemoreError, match="line 2 is 300 characters"):
        (tmp_path / "long").write_text("ok\n" + "x" * 300 + "\n")
        read_items(str(tmp_path / "long"))
    with pytest.raises(MakemoreError, match="no items"):
        (tmp_path / "empty").write_text("\n  \n")
        read_items(str(tmp_path / "empty"))
    with pytest.raises(MakemoreError, match="no such file"):
        read_items(str(tmp_path / "missing.txt"))


def test_split_is_seeded_and_matches_the_lectures_recipe():
    import random

    items = [f"item{i}" for i in range(100)]
    splits = split_items(items, (0.8, 0.1, 0.1), seed=42)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert splits == split_items(items, (0.8, 0.1, 0.1), seed=42)
    assert splits != split_items(items, (0.8, 0.1, 0.1), seed=43)
    expected = list(items)
    random.seed(42)
    random.shuffle(expected)
    assert splits["train"] == expected[:80]
    with pytest.raises(MakemoreError):
        parse_fractions("0.8,0.3,0.1")


def test_builtin_datasets_ship_with_the_package():
    first, source = read_items("first-names")
    assert len(first) == 5163 and source.builtin and first[0] == "mary"
    assert len(read_items("surnames")[0]) == 88799


def test_bucketed_batches_carry_no_more_padding_and_resume_exactly():
    items = [("x" * (1 + i % 15)) for i in range(500)]
    split = LineSplit(items, Vocab.from_texts(items))
    plain = LengthBucketSampler(split, 32, seed=0, bucket=False)
    bucketed = LengthBucketSampler(split, 32, seed=0)
    slots = lambda sampler: sum(sampler.next()[1].numel() for _ in range(200))  # noqa: E731
    assert slots(bucketed) < 0.8 * slots(plain)
    a = LengthBucketSampler(split, 8, seed=3)
    for _ in range(70):
        a.next()
    b = LengthBucketSampler(split, 8, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(100):
        assert torch.equal(a.next()[0], b.next()[0])


@pytest.mark.parametrize("batch_size", [1, 7, 4096])
def test_eval_loss_does_not_depend_on_batching_or_padding(batch_size):
    items = ["emma", "ava", "sophia", "x", "isabella", "mia"] * 3
    vocab = Vocab.from_texts(items)
    split = LineSplit(items, vocab)
    model = build_model("mlp", MODELS["mlp"].config_class(n_hidden=16, n_embd=4), vocab.size).eval()
    result = evaluate(model, split.eval_batches(batch_size))
    # Reference: each item alone, no padding at all.
    total, count = 0.0, 0
    for item in items:
        one = LineSplit([item], vocab)
        logits, _ = model(one.inputs)
        logp = torch.log_softmax(logits, -1)[0, torch.arange(len(item) + 1), one.targets[0]]
        total, count = total - logp.sum().item(), count + len(item) + 1
    assert result["tokens"] == count
    assert result["nll"] == pytest.approx(total / count, abs=1e-5)
    assert result["bpc"] == pytest.approx(result["nll"] / math.log(2))
