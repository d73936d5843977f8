"""Rows of a batch trained in shards on several threads (row_split.py), and the compiled packed attention they use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from makemore.data.lines import BOUNDARY, IGNORE, LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.models.base import segment_starts
from makemore.models.transformer import CompiledAttention, Visibility
from makemore.training.optim import FlatAdamW
from makemore.training.row_split import RowSplitter
from makemore.training.trainer import ThreadChooser, TrainConfig, Trainer


def packed_batch(rows: int = 6, width: int = 12, vocab: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of several items each: BOUNDARY starts an item; targets are inputs shifted, padding at the end."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (rows, width), generator=g)
    x[:, 0] = BOUNDARY
    x[torch.rand(rows, width, generator=g) < 0.2] = BOUNDARY
    y = torch.cat([x[:, 1:], torch.full((rows, 1), BOUNDARY)], dim=1)
    y[-1, -3:] = IGNORE
    return x, y


def build_optimizer_groups(model) -> list[dict]:
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2]}, {"params": [p for p in params if p.dim() < 2]}]


def tiny_transformer(dropout: float = 0.0, vocab_size: int = 9):
    config = MODELS["transformer"].config_class(block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=dropout)
    torch.manual_seed(0)
    return build_model("transformer", config, vocab_size)


@pytest.mark.parametrize("width", [5, 16])
def test_compiled_attention_equals_pytorch_attention_forward_and_backward(width):
    x, _ = packed_batch(rows=5, width=width)
    starts = segment_starts(x)
    torch.manual_seed(1)
    qkv = torch.randn(5, width, 3 * 16, dtype=torch.float32, requires_grad=True)
    grad = torch.randn(5, width, 16)

    def pytorch(qkv):
        q, k, v = qkv.view(5, width, 3, 2, 8).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=Visibility(starts, False).allowed)
        return y.transpose(1, 2).reshape(5, width, 16)

    expected = pytorch(qkv)
    (expected_grad,) = torch.autograd.grad(expected, qkv, grad)
    got = CompiledAttention.apply(qkv, starts, 2, True)
    (got_grad,) = torch.autograd.grad(got, qkv, grad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # without a backward to come: scratch probabilities, same output
        torch.testing.assert_close(CompiledAttention.apply(qkv, starts, 2, False), expected, atol=1e-5, rtol=1e-5)


def test_model_gives_the_same_loss_and_gradient_with_either_attention(monkeypatch):
    model = tiny_transformer()
    x, y = packed_batch()
    results = []
    for limit in (0, 64):  # 0: PyTorch's attention everywhere; 64: the compiled kernel
        monkeypatch.setattr("makemore.models.transformer.COMPILED_ATTENTION_MAX_T", limit)
        _, loss = model(x, y)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_compiled_attention_is_chosen_by_item_length_not_row_width(monkeypatch):
    config = MODELS["transformer"].config_class(block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    model = build_model("transformer", config, 9)
    calls = []
    original = CompiledAttention.apply
    monkeypatch.setattr(CompiledAttention, "apply", lambda *args: calls.append(1) or original(*args))
    short_items = torch.randint(1, 9, (2, 32))
    short_items[:, ::8] = BOUNDARY  # rows of 32, items of 8 positions
    model(short_items)
    assert calls, "packed short items take the compiled kernel"
    calls.clear()
    one_long_item = torch.randint(1, 9, (2, 32))
    one_long_item[:, 0] = BOUNDARY  # a full causal window of 32: PyTorch's kernel
    model(one_long_item)
    assert not calls


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("flat", [False, True])  # gradients summed per parameter, or per flat buffer (FlatAdamW)
def test_shards_sum_to_the_whole_batch_gradient(parts, flat):
    model = tiny_transformer()
    x, y = packed_batch()
    _, loss = model(x, y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    layout = FlatAdamW(build_optimizer_groups(model), lr=1e-3, betas=(0.9, 0.99)).layout() if flat else None
    splitter = RowSplitter(model, seed=0, flat=layout)
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


def test_chooser_with_split_keeps_one_intra_op_thread():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        chooser = ThreadChooser(True, split=True)
        chooser.use(2, split=True)
        assert chooser.active == 2 and chooser.splitting and torch.get_num_threads() == 1
        chooser.use(2)
        assert chooser.active == 2 and not chooser.splitting and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_training_on_two_threads_repeats_exactly(tmp_path):
    items = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn", "abigail"] * 4
    vocab = Vocab.from_texts(items)
    before = torch.get_num_threads()

    def train(run: str) -> list[torch.Tensor]:
        model = tiny_transformer(dropout=0.2, vocab_size=vocab.size)
        (tmp_path / run).mkdir()
        splits = {"train": LineSplit(items, vocab), "val": LineSplit(items[:8], vocab)}
        config = TrainConfig(max_steps=6, batch_size=8, threads=0, eval_every=3, seed=3, warmup_steps=0)
        torch.set_num_threads(2)
        trainer = Trainer(model, splits, config, tmp_path / run)
        assert trainer.splitter is not None
        trainer.thread_chooser.enabled = False  # no timing: shards on two threads throughout
        trainer.thread_chooser.use(2, split=True)
        trainer.train()
        return [p.detach().clone() for p in model.parameters()]

    try:
        torch.manual_seed(0)
        first = train("a")
        torch.manual_seed(0)
        second = train("b")
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
