"""Threads are a setting, never a timing decision: `--threads N` is set once (0: PyTorch's default, untouched), and
the same config trains to the same weights bit for bit."""

from __future__ import annotations

import pytest
import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

ITEMS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn", "abigail"] * 4


@pytest.fixture
def thread_calls(monkeypatch):
    """Every torch.set_num_threads call; the thread count is put back after the test."""
    calls: list[int] = []
    original, before = torch.set_num_threads, torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or original(n))
    yield calls
    original(before)


def train(run_dir, **settings) -> Trainer:
    vocab = Vocab.from_texts(ITEMS)
    torch.manual_seed(0)
    config = MODELS["transformer"].config_class(block_size=12, n_layer=1, n_head=2, n_embd=16, dropout=0.2)
    model = build_model("transformer", config, vocab.size)
    splits = {"train": LineSplit(ITEMS, vocab), "val": LineSplit(ITEMS[:8], vocab)}
    options = dict(max_steps=6, batch_size=8, eval_every=3, seed=3, warmup_steps=2, device="cpu") | settings
    run_dir.mkdir()
    trainer = Trainer(model, splits, TrainConfig(**options), run_dir)
    trainer.train()
    return trainer


def test_threads_are_set_once_for_the_whole_run(tmp_path, thread_calls):
    trainer = train(tmp_path / "run", threads=1)
    assert thread_calls == [1] and torch.get_num_threads() == 1 and trainer.threads == 1


def test_threads_zero_leaves_pytorchs_default_alone(tmp_path, thread_calls):
    before = torch.get_num_threads()
    train(tmp_path / "run", threads=0)
    assert thread_calls == [] and torch.get_num_threads() == before


def test_the_same_config_trains_to_the_same_weights(tmp_path):
    first, second = train(tmp_path / "a"), train(tmp_path / "b")
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert first.state.best_val == second.state.best_val


def test_no_thread_chooser_is_left():
    from makemore.training import trainer

    assert not hasattr(trainer, "ThreadChooser") and not hasattr(trainer, "OtherLoad")


def test_the_allocator_setting_changes_speed_only(tmp_path, monkeypatch):
    """devices.keep_freed_memory (glibc's mmap and trim thresholds) is set by every CPU trainer; a run with glibc's
    default thresholds put back first trains to the same weights."""
    import ctypes
    import sys

    from makemore.training import devices, trainer

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    kept = train(tmp_path / "kept").model.state_dict()
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or False)
    mallopt(devices.M_MMAP_THRESHOLD, 128 * 1024)  # glibc's defaults (a fixed threshold, no longer adaptive)
    mallopt(devices.M_TRIM_THRESHOLD, 128 * 1024)
    try:
        plain = train(tmp_path / "plain").model.state_dict()
    finally:
        monkeypatch.undo()
        devices.keep_freed_memory()
    assert calls == [1]  # the trainer asked for it (and, patched, left glibc's defaults in place)
    assert kept.keys() == plain.keys() and all(torch.equal(kept[k], plain[k]) for k in kept)
