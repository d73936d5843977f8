"""Mixed precision (bf16 / fp16 autocast, with a GradScaler for fp16) and torch.compile, on CPU.

Both change how the same steps are computed, never what is computed: the losses must stay close to fp32 eager.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from makemore import config as config_mod
from makemore.data.lines import LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

TINY_MODELS = {
    "mlp": {"n_embd": 8, "n_hidden": 32, "dropout": 0.0},
    "transformer": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.0},
}


def make_trainer(run_dir: Path, names_file: Path, model_name: str = "mlp", **overrides) -> Trainer:
    items = names_file.read_text().split()
    vocab = Vocab.from_texts(items)
    splits = {"train": LineSplit(items[:72], vocab), "val": LineSplit(items[72:], vocab)}
    model_config = config_mod.replace(MODELS[model_name].config_class(), **TINY_MODELS[model_name])
    torch.manual_seed(0)
    model = build_model(model_name, model_config, vocab.size)
    settings = dict(max_steps=6, log_every=1, eval_every=6, batch_size=16, lr=1e-2, warmup_steps=0, device="cpu")
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(model, splits, config_mod.replace(TrainConfig(), **{**settings, **overrides}), run_dir)


def train_losses(trainer: Trainer) -> list[float]:
    trainer.train()
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if r["event"] == "train"]


@pytest.mark.parametrize("model_name", [name for name in TINY_MODELS if name in MODELS])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_losses_stay_close_to_fp32(tmp_path, names_file, model_name, dtype):
    reference = train_losses(make_trainer(tmp_path / "fp32", names_file, model_name))
    trainer = make_trainer(tmp_path / dtype, names_file, model_name, dtype=dtype)
    assert (trainer.scaler is not None) == (dtype == "fp16")  # fp16 gets a GradScaler (also on CPU)
    losses = train_losses(trainer)
    assert len(losses) == len(reference) == 6
    # bf16 keeps 8 bits of mantissa (fp16: 11); over 6 steps the losses drift by ~3e-4 (bf16) relative to fp32.
    assert losses == pytest.approx(reference, rel=5e-3)
    assert losses != reference  # the low precision was really in use
    assert losses[-1] < losses[0]  # and training still trains


def test_fp16_overflow_is_skipped_by_the_scaler_not_reported_as_divergence(tmp_path, names_file):
    trainer = make_trainer(tmp_path / "run", names_file, dtype="fp16", max_steps=6)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # far too large: fp16 gradients overflow
    losses = train_losses(trainer)  # must not stop with "the gradient norm became inf"
    assert len(losses) == 6 and all(map(math.isfinite, losses))
    assert trainer.scaler.get_scale() < 2.0**40  # the scaler skipped the overflowing steps and backed off


def test_fp16_loss_scale_is_checkpointed(tmp_path, names_file):
    trainer = make_trainer(tmp_path / "run", names_file, dtype="fp16", max_steps=2)
    trainer.train()
    scale = trainer.scaler.get_scale()
    resumed = make_trainer(tmp_path / "run", names_file, dtype="fp16", max_steps=2)
    resumed.restore()
    assert resumed.scaler.get_scale() == scale and resumed.state.step == 2


def test_compile_failing_at_wrap_time_falls_back_to_eager(tmp_path, names_file, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler for this platform\nlong details")

    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = make_trainer(tmp_path / "run", names_file, compile=True, max_steps=2)
    assert trainer.train_forward is trainer.eager_forward
    assert trainer.warnings == [
        "--compile: torch.compile is unavailable (RuntimeError: no compiler for this platform); training without it"
    ]
    assert len(train_losses(trainer)) == 2


def test_compile_failing_at_the_first_step_falls_back_to_the_same_eager_run(tmp_path, names_file, monkeypatch):
    """Most compile errors surface in the first call; the step is then redone eagerly, so nothing is lost."""
    reference = train_losses(make_trainer(tmp_path / "eager", names_file, max_steps=3))
    calls = []

    def compile_that_fails_when_called(module, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise RuntimeError("backend compiler failed")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_that_fails_when_called)
    events = []
    trainer = make_trainer(tmp_path / "compiled", names_file, compile=True, max_steps=3)
    trainer.on_event = events.append
    assert train_losses(trainer) == reference  # exactly: the failed attempt left no trace
    assert calls == [1]  # tried once, then eager for good
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == [
        "--compile: compiling the model failed (RuntimeError: backend compiler failed); training without it"
    ]


def has_c_compiler() -> bool:
    return any(shutil.which(name) for name in ("cc", "gcc", "clang", "g++", "c++"))


@pytest.mark.slow
@pytest.mark.skipif(not has_c_compiler(), reason="torch.compile (inductor) on CPU needs a C/C++ compiler; none found")
def test_compile_on_cpu_trains_like_eager(tmp_path, names_file):
    """The real thing: inductor generates and builds C++ kernels (tens of seconds the first time on a cold cache)."""
    reference = train_losses(make_trainer(tmp_path / "eager", names_file, max_steps=3))
    trainer = make_trainer(tmp_path / "compiled", names_file, compile=True, max_steps=3)
    losses = train_losses(trainer)
    if trainer.warnings:  # a toolchain that is present but broken: the fallback must have kept training going
        assert trainer.train_forward is trainer.eager_forward
        assert losses == reference
    else:
        assert trainer.train_forward is not trainer.eager_forward
        assert losses == pytest.approx(reference, rel=1e-4)
    # checkpoints hold the plain module's names: no `_orig_mod.` prefix
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "compiled" / "model.safetensors")) == set(trainer.model.state_dict())
