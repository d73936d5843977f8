import os

import pytest
import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.models import MODELS, build_model
from makemore.runs import checkpoint as ckpt
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer


def test_atomic_write_interrupted_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    ckpt.save_tensors(path, {"w": torch.ones(3)})

    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        ckpt.save_tensors(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(ckpt.load_tensors(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind


def test_truncated_weights_give_a_one_line_error(tmp_path):
    path = tmp_path / "model.safetensors"
    ckpt.save_tensors(path, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(MakemoreError, match="model.safetensors: not a valid safetensors file"):
        ckpt.load_tensors(path)


def make_trainer(run_dir, items, should_stop=None, max_steps=40, ema=0.0):
    vocab = Vocab.from_texts(items)
    torch.manual_seed(0)
    model = build_model("mlp", MODELS["mlp"].config_class(n_embd=4, n_hidden=16, dropout=0.2), vocab.size)
    splits = {name: LineSplit(items, vocab) for name in ("train", "val", "test")}
    config = TrainConfig(
        max_steps=max_steps, batch_size=8, eval_every=10, log_every=1, warmup_steps=5, device="cpu", ema=ema
    )
    return Trainer(model, splits, config, run_dir, should_stop=should_stop)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_stop_and_resume_gives_the_same_loss_curve_as_an_uninterrupted_run(tmp_path, names_file, ema):
    items = names_file.read_text().split()
    straight = make_trainer(tmp_path / "a", items, ema=ema)
    (tmp_path / "a").mkdir()
    straight.train()

    (tmp_path / "b").mkdir()
    first = make_trainer(tmp_path / "b", items, ema=ema)
    first.should_stop = lambda: first.state.step == 17  # stop between checkpoints, like a Ctrl-C
    assert first.train()["stopped"] == "interrupted"
    torch.manual_seed(123)  # a different global RNG state must not matter: resume restores it
    second = make_trainer(tmp_path / "b", items, ema=ema)
    second.restore()
    assert second.state.step == 17
    second.train()

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [line for line in lines if '"train"' in line]

    def strip(lines):
        return [line.split('"elapsed"')[0] + line.split('"lr"')[1].split('"tokens_per_s"')[0] for line in lines]

    assert strip(losses(tmp_path / "a")) == strip(losses(tmp_path / "b"))
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    evals = [run.joinpath("metrics.jsonl").read_text().count('"eval"') for run in (tmp_path / "a", tmp_path / "b")]
    assert evals[0] == evals[1] > 0
    best = [ckpt.load_tensors(run / ckpt.WEIGHTS_FILE) for run in (tmp_path / "a", tmp_path / "b")]
    assert all(torch.equal(best[0][name], best[1][name]) for name in best[0])


def test_ema_evaluates_and_keeps_the_average_and_trains_the_weights(tmp_path, names_file):
    items = names_file.read_text().split()
    trainer = make_trainer(tmp_path, items, max_steps=12, ema=0.9)
    trainer.train()
    average, trained = trainer.average.averaged, [p.detach().clone() for p in trainer.model.parameters()]
    assert not all(torch.equal(a, t) for a, t in zip(average, trained))  # the average lags the weights
    trainer.state.best_val = float("inf")  # the next evaluation is the best so far: it writes the weights file
    trainer.record_eval(0.0)
    kept = ckpt.load_tensors(tmp_path / ckpt.WEIGHTS_FILE)
    names = [name for name, _ in trainer.model.named_parameters()]
    assert all(torch.equal(kept[name], a) for name, a in zip(names, average))
    assert all(torch.equal(p, t) for p, t in zip(trainer.model.parameters(), trained))  # training goes on from these
