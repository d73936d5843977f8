"""optim.FlatAdamW: the numbers of torch.optim.AdamW(fused=True), one buffer per group, state dicts that move
between the two."""

import pytest
import torch

from makemore.models import MODELS, build_model
from makemore.training.optim import FlatAdamW
from makemore.training.trainer import TrainConfig, build_optimizer

TINY = {
    "transformer": {"block_size": 6, "n_layer": 2, "n_head": 2, "n_embd": 16},
    "gru": {"n_embd": 8, "n_hidden": 16, "n_layer": 2},
    "wavenet": {"n_layer": 2, "n_embd": 8, "n_hidden": 16, "norm": "batch"},
}


def _model(name: str = "transformer") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, MODELS[name].config_class(**TINY[name]), 7)


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


def _groups(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": [p for p in model.parameters() if p.dim() < 2]}]


@pytest.mark.parametrize("name", ["transformer", "gru", "wavenet"])
def test_flat_adamw_matches_fused_adamw(name):
    reference, flat = _model(name), _model(name)
    flat_optimizer = FlatAdamW(_groups(flat), lr=1e-2, betas=(0.9, 0.99))
    ref_optimizer = torch.optim.AdamW(_groups(reference), lr=1e-2, betas=(0.9, 0.99), fused=True)
    # (clipping is left out: its norm sums in another order, and Adam magnifies rounding in ~0 gradients, e.g. of
    # the key biases, to whole-size steps)
    losses = _train(flat, flat_optimizer)
    ref_losses = _train(reference, ref_optimizer)
    assert losses == pytest.approx(ref_losses, rel=1e-6)
    for (name_, a), b in zip(flat.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name_)
    # the parameters are views of the flat buffers: what the step wrote is what the model computes with
    storages = [flat.untyped_storage().data_ptr() for flat in flat_optimizer.flat_params]
    assert all(p.untyped_storage().data_ptr() == storages[p.dim() < 2] for p in flat.parameters())


def test_state_dicts_move_between_flat_and_plain_adamw():
    plain_model, flat_model = _model(), _model()
    plain = torch.optim.AdamW(_groups(plain_model), lr=1e-2, betas=(0.9, 0.99), fused=True)
    _train(plain_model, plain, steps=3)
    flat_model.load_state_dict(plain_model.state_dict())
    flat = FlatAdamW(_groups(flat_model), lr=1e-2, betas=(0.9, 0.99))
    flat.load_state_dict(plain.state_dict())
    # the loaded moments sit in the flat buffers the step reads
    assert float(flat.moments[0][2]) == 3.0
    assert flat.moments[0][0].abs().sum() > 0
    _train(plain_model, plain, steps=2)
    _train(flat_model, flat, steps=2)
    for a, b in zip(flat_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    back = torch.optim.AdamW(_groups(_model()), lr=1e-2, betas=(0.9, 0.99), fused=True)
    back.load_state_dict(flat.state_dict())
    assert float(back.state_dict()["state"][0]["step"]) == 5.0


def test_clipping_the_flat_gradients_clips_every_parameter():
    model = _model()
    optimizer = FlatAdamW(_groups(model), lr=1e-2, betas=(0.9, 0.99))
    _, loss = model(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    loss.backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    norm = torch.nn.utils.clip_grad_norm_(optimizer.flat_params, 1e-3)
    torch.testing.assert_close(norm, expected)
    torch.testing.assert_close(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]), torch.tensor(1e-3))


def test_a_replaced_gradient_gets_its_view_back():
    model = _model()
    optimizer = FlatAdamW(_groups(model), lr=1e-2, betas=(0.9, 0.99))
    first = next(model.parameters())
    first.grad = torch.ones_like(first)  # e.g. code that assigns gradients instead of accumulating them
    optimizer.zero_grad()
    _, loss = model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    loss.backward()
    assert optimizer.flat_params[0].grad[: first.numel()].abs().sum() > 0


def test_trainer_uses_flat_adamw_only_where_it_was_tried():
    model = _model()
    assert isinstance(build_optimizer(model, TrainConfig(), flat=True), FlatAdamW)
    assert not isinstance(build_optimizer(_model(), TrainConfig(), flat=False), FlatAdamW)
    assert isinstance(build_optimizer(_model(), TrainConfig(optimizer="sgd"), flat=True), torch.optim.SGD)
