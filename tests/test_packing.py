"""PackedSampler: rows of several whole items, drawn like LengthBucketSampler, resumable exactly."""

from __future__ import annotations

import random

import pytest
import torch

from makemore.data.batching import LengthBucketSampler, PackedSampler, pack_rows
from makemore.data.lines import BOUNDARY, IGNORE, LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

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


@pytest.mark.parametrize("width", [16, 24, 32])
def test_pack_rows_places_every_item_once_without_overlap(width):
    lengths = sorted((random.Random(i).randint(1, 16) for i in range(500)), reverse=True)
    rows, cols = pack_rows(lengths, width)
    by_row: dict[int, list[tuple[int, int]]] = {}
    for row, col, length in zip(rows, cols, lengths):
        by_row.setdefault(row, []).append((col, length))
    for spans in by_row.values():
        end = 0
        for col, length in sorted(spans):
            assert col == end  # items follow each other without gaps
            end = col + length
        assert end <= width
    assert sorted(by_row) == list(range(len(by_row)))
    assert sum(lengths) / (width * len(by_row)) > 0.97  # rows come out nearly full


def test_wider_rows_hold_the_same_slots_fuller():
    lengths = [len(item) + 1 for item in ITEMS]  # 2..13
    split = LineSplit(ITEMS, VOCAB)
    narrow = PackedSampler(split, batch_size=8, seed=0)
    wide = PackedSampler(split, batch_size=8, seed=0, width=2 * max(lengths))
    for sampler, rows in ((narrow, 8), (wide, 4)):
        x, y = sampler.next()
        assert x.size(0) == rows and x.numel() <= 8 * max(lengths)
        assert set(items_of(x, y)) <= set(ITEMS)
    assert (wide.targets != IGNORE).float().mean() >= (narrow.targets != IGNORE).float().mean()


def test_transformer_reads_rows_wider_than_its_context_in_one_pass_when_every_item_fits():
    config = MODELS["transformer"].config_class(block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model = build_model("transformer", config, VOCAB.size).eval()
    items = [VOCAB.encode(item)[:7] for item in ITEMS[:6]]
    row = [BOUNDARY]
    for item in items:
        row += item + [BOUNDARY]
    x = torch.tensor([row[:-1]])  # (1, T > block_size), no item longer than 8 positions
    assert x.size(1) > config.block_size
    packed, _ = model(x)
    start = 0
    for item in items:  # each item alone gives the same logits
        alone, _ = model(torch.tensor([[BOUNDARY] + item]))
        torch.testing.assert_close(packed[:, start : start + len(item) + 1], alone, rtol=1e-5, atol=1e-5)
        start += len(item) + 1


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
