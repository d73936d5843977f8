"""Rows of a batch trained in shards on several threads (row_split.py, `--row-shards`): the same gradient as the whole
batch, dropout streams per shard, and runs that repeat exactly."""

from __future__ import annotations

import pytest
import torch

from makemore.data.lines import BOUNDARY, IGNORE, LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.training.config import TrainConfig
from makemore.training.row_split import RowSplitter
from makemore.training.trainer import Trainer


def packed_batch(rows: int = 6, width: int = 12, vocab: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of several items each: BOUNDARY starts an item; targets are inputs shifted, padding at the end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (rows, width), generator=g)
    x[:, 0] = BOUNDARY
    x[torch.rand(rows, width, generator=g) < 0.2] = BOUNDARY
    y = torch.cat([x[:, 1:], torch.full((rows, 1), BOUNDARY)], dim=1)
    y[-1, -3:] = IGNORE
    return x, y


def tiny_transformer(dropout: float = 0.0, vocab_size: int = 9):
    config = MODELS["transformer"].config_class(block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=dropout)
    torch.manual_seed(0)
    return build_model("transformer", config, vocab_size)


@pytest.mark.parametrize("parts", [2, 3])
def test_shards_sum_to_the_whole_batch_gradient(parts):
    model = tiny_transformer()
    x, y = packed_batch()
    _, loss = model(x, y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    splitter = RowSplitter(model, seed=0)
    try:
        got_loss = splitter.gradients(model, x, y, step=0, parts=parts, context=torch.enable_grad)
    finally:
        splitter.close()
    torch.testing.assert_close(got_loss, loss.detach(), atol=1e-6, rtol=1e-5)
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)


def test_shard_dropout_repeats_for_a_seed_and_step_and_differs_across_steps():
    model = tiny_transformer(dropout=0.3).train()
    x, y = packed_batch()
    splitter = RowSplitter(model, seed=5)
    try:
        losses = [float(splitter.gradients(model, x, y, step, 2, torch.enable_grad)) for step in (7, 7, 8)]
    finally:
        splitter.close()
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_row_shards_are_a_setting_and_repeat_exactly(tmp_path):
    items = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn", "abigail"] * 4
    vocab = Vocab.from_texts(items)
    before = torch.get_num_threads()

    def train(run: str, shards: int) -> list[torch.Tensor]:
        model = tiny_transformer(dropout=0.2, vocab_size=vocab.size)
        (tmp_path / run).mkdir()
        splits = {"train": LineSplit(items, vocab), "val": LineSplit(items[:8], vocab)}
        config = TrainConfig(
            max_steps=6, batch_size=8, eval_every=3, seed=3, warmup_steps=0, row_shards=shards, threads=2
        )
        trainer = Trainer(model, splits, config, tmp_path / run)
        assert (trainer.splitter is not None) == (shards > 1)
        trainer.train()
        assert torch.get_num_threads() == trainer.threads  # the run's threads are back for what comes next
        return [p.detach().clone() for p in model.parameters()]

    try:
        first, second, whole = train("a", 2), train("b", 2), train("c", 1)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, c) for a, c in zip(first, whole))  # shards have their own dropout streams


def test_row_shards_where_rows_interact_train_whole_with_a_warning(tmp_path):
    items = ["emma", "olivia", "ava", "isabella"] * 4
    vocab = Vocab.from_texts(items)
    model = build_model("wavenet", MODELS["wavenet"].config_class(n_layer=1, n_embd=4, n_hidden=8), vocab.size)
    splits = {"train": LineSplit(items, vocab), "val": LineSplit(items, vocab)}
    trainer = Trainer(model, splits, TrainConfig(max_steps=2, batch_size=4, row_shards=2), tmp_path)
    assert trainer.splitter is None
    assert trainer.warnings == ["--row-shards 2: this model's rows are not independent; training each batch whole"]
