"""PackedSampler: rows of several whole items, drawn like LengthBucketSampler, resumable exactly."""

from __future__ import annotations

import random

import torch

from makemore.data import BOUNDARY, IGNORE, LengthBucketSampler, LineSplit, PackedSampler, Vocab, best_fit_decreasing
from makemore.models import MODELS, build_model
from makemore.train import TrainConfig, Trainer

ITEMS = ["".join(random.Random(i).choices("abcdefghij", k=random.Random(-i).randint(1, 12))) for i in range(300)]
VOCAB = Vocab.from_texts(ITEMS)


def items_of(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    found = []
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        real = [t for t, b in enumerate(row_y) if b != IGNORE]
        assert real == list(range(len(real))), "real tokens come first, padding only at the end of a row"
        starts = [t for t in real if row_x[t] == BOUNDARY]
        assert starts and starts[0] == 0
        for start, end in zip(starts, starts[1:] + [len(real)]):
            assert row_y[end - 1] == BOUNDARY
            assert row_x[start + 1 : end] == row_y[start : end - 1]  # inputs are the targets shifted by one
            found.append(VOCAB.decode(row_x[start + 1 : end]))
    return found


def test_best_fit_decreasing_never_overflows_a_row():
    lengths = sorted((random.Random(i).randint(1, 16) for i in range(500)), reverse=True)
    rows, cols = best_fit_decreasing(lengths, 16)
    ends: dict[int, int] = {}
    for row, col, length in zip(rows, cols, lengths):
        assert col == ends.get(row, 0)  # items follow each other without gaps
        ends[row] = col + length
    assert max(ends.values()) <= 16
    assert sum(lengths) / (16 * len(ends)) > 0.9  # rows come out nearly full


def test_packed_batches_hold_whole_items_and_little_padding():
    split = LineSplit(ITEMS, VOCAB)
    sampler = PackedSampler(split, batch_size=8, seed=0)
    known = set(ITEMS)
    useful = slots = 0
    for _ in range(20):
        x, y = sampler.next()
        assert x.shape == y.shape and x.size(0) <= 8 and x.size(1) <= int(split.lengths.max())
        assert set(items_of(x, y)) <= known
        useful += int((y != IGNORE).sum())
        slots += y.numel()
    assert useful / slots > 0.85


def test_packed_sampler_resumes_exactly():
    split = LineSplit(ITEMS, VOCAB)
    sampler = PackedSampler(split, batch_size=8, seed=3, pool_batches=2)
    for _ in range(5):  # across a pool refill
        sampler.next()
    twin = PackedSampler(split, batch_size=8, seed=99, pool_batches=2)
    twin.load_state_dict(sampler.state_dict())
    for _ in range(5):
        a, b = sampler.next(), twin.next()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_trainer_packs_only_models_that_restart_at_boundaries(tmp_path):
    splits = {"train": LineSplit(ITEMS, VOCAB), "val": LineSplit(ITEMS[:20], VOCAB)}
    for name, packable in (("transformer", True), ("gru", False)):
        config = MODELS[name].config_class()
        model = build_model(name, config, VOCAB.size)
        assert model.packable == packable
        for pack in (True, False):
            trainer = Trainer(model, splits, TrainConfig(pack=pack, device="cpu"), tmp_path / f"{name}-{pack}")
            expected = PackedSampler if pack and packable else LengthBucketSampler
            assert type(trainer.sampler) is expected
