"""optim.py: PyTorch's own AdamW (fused where available), public clipping, and the weight average in public ops;
no private PyTorch anywhere in training/."""

import re
from pathlib import Path

import pytest
import torch

from makemore.models import MODELS, build_model
from makemore.training.flat_adamw import FlatAdamW
from makemore.training.optim import WeightAverage, build_optimizer, clip_gradients, parameter_groups
from makemore.training.trainer import TrainConfig

TRAINING = Path(__file__).resolve().parents[1] / "src" / "makemore" / "training"
TINY = {
    "transformer": {"block_size": 6, "n_layer": 2, "n_head": 2, "n_embd": 16},
    "gru": {"n_embd": 8, "n_hidden": 16, "n_layer": 2},
    "wavenet": {"n_layer": 2, "n_embd": 8, "n_hidden": 16, "norm": "batch"},
}


def _model(name: str = "transformer") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, MODELS[name].config_class(**TINY[name]), 7)


def test_training_uses_no_private_pytorch():
    private = re.compile(r"torch\._\w+|\._step_supports_amp_scaling|\._forward_hooks")
    found = [
        f"{path.name}: {match.group()}"
        for path in sorted(TRAINING.glob("*.py"))
        for match in private.finditer(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_adamw_is_pytorchs_own_with_decay_on_matrices_only(name):  # (without flat buffers: DDP, compile, fp16)
    model = _model(name)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1))
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["fused"] or decay["foreach"]  # one kernel call per step, or PyTorch's multi-tensor path


def test_sgd_when_asked():
    assert type(build_optimizer(_model(), TrainConfig(optimizer="sgd"))) is torch.optim.SGD


def test_clipping_clips_every_parameter_and_returns_the_norm_before():
    model = _model()
    _, loss = model(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    loss.backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    norm = clip_gradients(list(model.parameters()), 1e-3)
    torch.testing.assert_close(norm, expected)
    torch.testing.assert_close(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]), torch.tensor(1e-3))


@pytest.mark.parametrize("flat", [False, True])
def test_weight_average_follows_the_decay_schedule(flat):
    model = build_model("bigram", MODELS["bigram"].config_class(), 3)
    (weight,) = model.parameters()
    with torch.no_grad():
        weight.fill_(0.0)
    layout = FlatAdamW([{"params": [weight]}], lr=0.1, betas=(0.9, 0.99)).layout() if flat else None
    average = WeightAverage(model, decay=0.5, layout=layout)
    assert len(average.averaged) == 1 and average.averaged[0].numel() == weight.numel()
    with torch.no_grad():
        weight.fill_(1.0)
    average.update(step=0)  # decay min(0.5, 1/10): mostly the new weights
    assert torch.allclose(average.average[0], torch.full_like(weight, 0.9))
    average.update(step=100)  # decay 0.5
    assert torch.allclose(average.average[0], torch.full_like(weight, 0.95))
    with average.applied():
        assert torch.allclose(weight, torch.full_like(weight, 0.95))
    assert torch.equal(weight, torch.ones_like(weight))
    restored = WeightAverage(model, decay=0.5, layout=layout)
    restored.load_state_dict(average.state_dict())
    assert torch.equal(restored.average[0], average.average[0])


def _train(model, optimizer, steps: int = 5) -> list[float]:
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 7, (4, 6))
        _, loss = model(x, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["transformer", "gru", "wavenet"])
def test_flat_adamw_matches_fused_adamw(name):
    reference, flat = _model(name), _model(name)
    flat_optimizer = FlatAdamW(parameter_groups(flat, 0.1), lr=1e-2, betas=(0.9, 0.99))
    ref_optimizer = torch.optim.AdamW(parameter_groups(reference, 0.1), lr=1e-2, betas=(0.9, 0.99), fused=True)
    # (clipping is left out: its norm sums in another order, and Adam magnifies rounding in ~0 gradients, e.g. of
    # the key biases, to whole-size steps)
    assert _train(flat, flat_optimizer) == pytest.approx(_train(reference, ref_optimizer), rel=1e-6)
    for (name_, a), b in zip(flat.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name_)
    # the parameters are views of the flat buffers: what the step wrote is what the model computes with
    storages = [buffer.untyped_storage().data_ptr() for buffer in flat_optimizer.flat_params]
    assert all(p.untyped_storage().data_ptr() == storages[p.dim() < 2] for p in flat.parameters())


def test_state_dicts_move_between_flat_and_plain_adamw():
    plain_model, flat_model = _model(), _model()
    plain = torch.optim.AdamW(parameter_groups(plain_model, 0.1), lr=1e-2, betas=(0.9, 0.99), fused=True)
    _train(plain_model, plain, steps=3)
    flat_model.load_state_dict(plain_model.state_dict())
    flat = FlatAdamW(parameter_groups(flat_model, 0.1), lr=1e-2, betas=(0.9, 0.99))
    flat.load_state_dict(plain.state_dict())
    assert float(flat.moments[0][2]) == 3.0 and flat.moments[0][0].abs().sum() > 0  # loaded into the flat moments
    _train(plain_model, plain, steps=2)
    _train(flat_model, flat, steps=2)
    for a, b in zip(flat_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    back = torch.optim.AdamW(parameter_groups(_model(), 0.1), lr=1e-2, betas=(0.9, 0.99), fused=True)
    back.load_state_dict(flat.state_dict())
    assert float(back.state_dict()["state"][0]["step"]) == 5.0


def test_clipping_the_flat_gradients_clips_every_parameter():
    model = _model()
    optimizer = FlatAdamW(parameter_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.99))
    _, loss = model(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    loss.backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    torch.testing.assert_close(clip_gradients(optimizer.flat_params, 1e-3), expected)
    torch.testing.assert_close(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]), torch.tensor(1e-3))


def test_a_replaced_gradient_gets_its_view_back():
    model = _model()
    optimizer = FlatAdamW(parameter_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.99))
    first = next(model.parameters())
    first.grad = torch.ones_like(first)  # e.g. code that assigns gradients instead of accumulating them
    optimizer.zero_grad()
    _, loss = model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    loss.backward()
    assert optimizer.flat_params[0].grad[: first.numel()].abs().sum() > 0


def test_the_flat_optimizer_only_where_asked():
    assert isinstance(build_optimizer(_model(), TrainConfig(), flat=True), FlatAdamW)
    assert type(build_optimizer(_model(), TrainConfig(), flat=False)) is torch.optim.AdamW
    assert type(build_optimizer(_model(), TrainConfig(optimizer="sgd"), flat=True)) is torch.optim.SGD


def test_checkpoints_move_between_the_flat_and_the_plain_optimizer():
    """e.g. a run trained under torchrun (plain AdamW) resumed in one process (flat buffers), and back."""
    from makemore.training import optimizer_state

    plain, flat = _model(), _model()
    optimizers = build_optimizer(plain, TrainConfig(), flat=False), build_optimizer(flat, TrainConfig(), flat=True)
    _train(plain, optimizers[0], steps=2)
    _train(flat, optimizers[1], steps=2)
    for saved, loading in (optimizers, optimizers[::-1]):
        tensors, meta = optimizer_state.flatten_optimizer(saved.state_dict())
        loading.load_state_dict(optimizer_state.unflatten_optimizer(tensors, meta, loading))  # checked, then loaded
