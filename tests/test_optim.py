"""optim.py: PyTorch's own AdamW (fused where available), public clipping, and the weight average in public ops;
no private PyTorch anywhere in the package."""

import re
from pathlib import Path

import pytest
import torch

from makemore.models import MODELS, build_model
from makemore.training.config import TrainConfig
from makemore.training.optim import WeightAverage, build_optimizer, clip_gradients

SOURCE = Path(__file__).resolve().parents[1] / "src" / "makemore"
TINY = {
    "transformer": {"block_size": 6, "n_layer": 2, "n_head": 2, "n_embd": 16},
    "gru": {"n_embd": 8, "n_hidden": 16, "n_layer": 2},
    "wavenet": {"n_layer": 2, "n_embd": 8, "n_hidden": 16, "norm": "batch"},
}


def _model(name: str = "transformer") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, MODELS[name].config_class(**TINY[name]), 7)


def test_the_package_uses_no_private_pytorch():
    private = re.compile(r"torch\._\w+|\._step_supports_amp_scaling|\._forward_hooks")
    found = [
        f"{path.name}: {match.group()}"
        for path in sorted(SOURCE.rglob("*.py"))
        for match in private.finditer(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_adamw_is_pytorchs_own_with_decay_on_matrices_only(name):
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


def test_weight_average_follows_the_decay_schedule():
    model = build_model("bigram", MODELS["bigram"].config_class(), 3)
    (weight,) = model.parameters()
    with torch.no_grad():
        weight.fill_(0.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        weight.fill_(1.0)
    average.update(step=0)  # decay min(0.5, 1/10): mostly the new weights
    assert torch.allclose(average.averaged[0], torch.full_like(weight, 0.9))
    average.update(step=100)  # decay 0.5
    assert torch.allclose(average.averaged[0], torch.full_like(weight, 0.95))
    with average.applied():
        assert torch.allclose(weight, torch.full_like(weight, 0.95))
    assert torch.equal(weight, torch.ones_like(weight))
    restored = WeightAverage(model, decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert torch.equal(restored.averaged[0], average.averaged[0])
