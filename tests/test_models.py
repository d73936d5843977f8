"""Every registered model, built tiny, against the one interface: shapes, causality, initial loss, learning,
save -> load, incremental decoding, padding invariance and BatchNorm train/eval behaviour.

Adding a model to MODELS without a tiny config here fails `test_every_model_has_a_tiny_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from makemore.data.batching import PackedSampler
from makemore.data.lines import BOUNDARY, IGNORE, LineSplit, Vocab
from makemore.models import MODELS, LanguageModel, build_model
from makemore.runs import checkpoint as ckpt
from makemore.training.config import TrainConfig
from makemore.training.optim import build_optimizer

# Tiny configs, keyed by registry name: config-field overrides, or a function vocab_size -> model for models that
# need more than a config to exist. Sequences in the tests (T = 12) are longer than every finite context here, so
# the sliding-window / cropped-context paths run too.
TINY: dict[str, dict[str, Any] | Callable[[int], LanguageModel]] = {
    "ngram": {"order": 3},
    "bigram": {},
    "mlp": {"block_size": 3, "n_embd": 8, "n_hidden": 16, "n_layer": 2, "batch_norm": True, "dropout": 0.1},
    "wavenet": {"n_layer": 2, "n_embd": 8, "n_hidden": 16, "norm": "batch", "dropout": 0.1},
    "rnn": {"n_embd": 8, "n_hidden": 16, "n_layer": 2, "dropout": 0.1},
    "gru": {"n_embd": 8, "n_hidden": 16, "n_layer": 2, "dropout": 0.1},
    "lstm": {"n_embd": 8, "n_hidden": 16, "n_layer": 2, "dropout": 0.1},
    "transformer": {"block_size": 6, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.1},
    "mix": lambda vocab_size: tiny_mix(vocab_size),
    "knn": lambda vocab_size: tiny_knn(vocab_size),
}

NAMES = (
    "emma olivia ava isabella sophia mia amelia harper evelyn abigail emily ella elizabeth camila luna sofia avery "
    "mila aria scarlett penelope layla chloe victoria madison eleanor grace nora riley zoey"
).split()
VOCAB = Vocab.from_texts(NAMES)
V = VOCAB.size
T = 12


def make(name: str, **overrides: Any) -> LanguageModel:
    tiny = TINY[name]
    if callable(tiny):
        return tiny(V)
    config = MODELS[name].config_class(**{**tiny, **overrides})
    return build_model(name, config, V)


def tiny_mix(vocab_size: int) -> LanguageModel:
    """A mix's members are trained runs, not config: a fitted count bigram and an untrained (uniform) neural
    bigram. Its fit (EM on val) then moves the weights towards the count model."""
    from makemore.models.mix import Mix, MixConfig

    counts = build_model("ngram", MODELS["ngram"].config_class(order=2, tune_discounts=False), vocab_size)
    counts.fit(split())
    neural = build_model("bigram", MODELS["bigram"].config_class(), vocab_size)
    return Mix(MixConfig(n_members=2), vocab_size, [counts, neural])


def tiny_knn(vocab_size: int) -> LanguageModel:
    """A tiny GRU with an empty memory: its fit (train_steps) remembers the GRU's states on the training names and
    chooses the neighbours' settings on held_out()."""
    from makemore.models.knn import KNNLM, KNNConfig

    gru = build_model("gru", MODELS["gru"].config_class(n_embd=8, n_hidden=16, n_layer=1), vocab_size)
    return KNNLM(KNNConfig(dim=6, k=8), vocab_size, [gru])


def split() -> LineSplit:
    return LineSplit(NAMES, VOCAB)


def held_out() -> LineSplit:  # for count models' held-out choices (order, discounts)
    return LineSplit(["amelia", "nora", "ella", "layla", "mia"], VOCAB)


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return split().rows(torch.arange(n))


def random_tokens(B: int = 4) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def train_steps(model: LanguageModel, steps: int = 30, lr: float = 1e-2) -> None:
    """A few optimizer steps on a fixed batch (count models: fit in closed form instead)."""
    if not model.trainable:
        model.fit(split(), held_out())
        return
    optimizer = build_optimizer(model, TrainConfig(lr=lr, weight_decay=0.0))
    x, y = batch(16)
    model.train()
    for _ in range(steps):
        _, loss = model(x, y)
        optimizer.zero_grad()
        (loss + model.penalty()).backward()
        optimizer.step()


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def eval_loss(model: LanguageModel, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return model(x, y)[1].item()


def test_every_model_has_a_tiny_config():
    missing = sorted(set(MODELS) - set(TINY))
    assert not missing, f"add tiny configs to tests/test_models.py for: {missing}"


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes(name):
    model = make(name)
    train_steps(model, steps=1)
    x, y = batch(5)
    logits, loss = model(x, y)
    assert logits.shape == (5, x.size(1), V)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    logits, loss = model(x)
    assert logits.shape == (5, x.size(1), V) and loss is None


@pytest.mark.parametrize("name", list(MODELS))
def test_causality(name):
    """Changing token t never changes the logits at positions before t (eval mode: no dropout, fixed stats)."""
    model = make(name)
    train_steps(model, steps=3)
    model.eval()
    idx = random_tokens()
    with torch.no_grad():
        base, _ = model(idx)
        for t in range(T):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            logits, _ = model(changed)
            assert torch.allclose(logits[:, :t], base[:, :t], atol=1e-6, rtol=0), f"position {t} leaks backwards"


@pytest.mark.parametrize("name", list(MODELS))
def test_initial_loss_is_uniform(name):
    """A fresh model predicts close to uniform: loss ~ ln V.

    For logits with a small spread s around their mean, the expected loss is ln V + s^2 / 2 (second order); 0.25
    nats allows s up to ~0.7, far below what a badly scaled output layer gives (lecture 4: 27 instead of 3.3).
    """
    model = make(name)
    if not model.trainable:
        pytest.skip("count models are fitted in closed form, not initialised")
    x, y = batch(16)
    loss = eval_loss(model, x, y)
    assert abs(loss - math.log(V)) < 0.25, f"initial loss {loss:.3f}, ln V = {math.log(V):.3f}"


@pytest.mark.parametrize("name", list(MODELS))
def test_training_lowers_the_loss(name):
    model = make(name)
    x, y = batch(16)
    before = eval_loss(model, x, y)
    train_steps(model)
    after = eval_loss(model, x, y)
    assert after < before - 0.1, f"loss {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_gives_identical_logits(name):
    if name == "knn":
        pytest.skip("a memory's size comes from its fit: saved and loaded through its run directory in test_knn.py")
    model = make(name)
    train_steps(model, steps=5)
    model.eval()
    tensors = load_bytes(save_bytes({k: v.contiguous() for k, v in model.state_dict().items()}))
    torch.manual_seed(123)  # a differently initialised twin: everything must come from the file
    twin = make(name)
    ckpt.load_weights(twin, "memory", tensors)
    twin.eval()
    idx = random_tokens()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], twin(idx)[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_incremental_decoding_matches_forward(name):
    """init_state + step, token by token, with a reorder_state that drops and permutes rows midway."""
    model = make(name)
    train_steps(model, steps=5)
    model.eval()
    idx = random_tokens(4)
    idx[:, 0] = BOUNDARY
    rows = torch.tensor([3, 0, 2])  # row 1 "finished"; the rest re-ordered
    cut = 7
    with torch.no_grad():
        full, _ = model(idx)
        state = model.init_state(4)
        steps = []
        for t in range(T):
            if t == cut:
                state = model.reorder_state(state, rows)
            token = idx[:, t] if t < cut else idx[rows, t]
            logits, state = model.step(token, state)
            steps.append(logits)
    assert torch.allclose(torch.stack(steps[:cut], 1), full[:, :cut], atol=1e-5, rtol=1e-4)
    assert torch.allclose(torch.stack(steps[cut:], 1), full[rows, cut:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_padding_changes_nothing(name):
    """Extra padding columns (as a wider batch brings) leave real positions and the loss unchanged: batching by
    length is a speed choice only. Train mode too for models without dropout noise, where BatchNorm statistics
    must ignore the padding."""
    model = make(name, **({"dropout": 0.0} if "dropout" in _fields(name) else {}))
    train_steps(model, steps=3)
    x, y = batch(8)
    wide_x = torch.cat([x, torch.full((8, 5), BOUNDARY)], dim=1)
    wide_y = torch.cat([y, torch.full((8, 5), IGNORE)], dim=1)
    modes = ["eval"] + (["train"] if model.trainable else [])
    for mode in modes:
        model.train(mode == "train")
        torch.manual_seed(0)
        logits, loss = model(x, y)
        torch.manual_seed(0)
        wide_logits, wide_loss = model(wide_x, wide_y)
        real = y != IGNORE
        assert torch.allclose(wide_logits[:, : x.size(1)][real], logits[real], atol=1e-5), mode
        assert wide_loss.item() == pytest.approx(loss.item(), abs=1e-5), mode


def _fields(name: str) -> set[str]:
    tiny = TINY[name]
    if callable(tiny):
        return set()
    return set(MODELS[name].config_class.__dataclass_fields__)


BATCH_NORM_MODELS = [name for name in MODELS if not callable(TINY.get(name)) and has_batch_norm(make(name))]


def test_some_model_uses_batch_norm():
    assert BATCH_NORM_MODELS, "no tiny config enables BatchNorm: the BatchNorm test would test nothing"


@pytest.mark.parametrize("name", BATCH_NORM_MODELS)
def test_batch_norm_train_and_eval(name):
    """Train mode normalises with the batch's statistics; eval mode with the running ones, deterministically."""
    model = make(name, dropout=0.0)
    train_steps(model, steps=10)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(m.num_batches_tracked.item() == 10 for m in norms)
    assert any(m.running_mean.abs().sum() > 0 for m in norms), "running statistics were never updated"
    x, y = batch(8)
    with torch.no_grad():
        model.train()  # a row's output depends on its batch companions
        alone_train = model(x[:1], y[:1])[0]
        together_train = model(x, y)[0][:1]
        assert not torch.allclose(alone_train, together_train, atol=1e-4)
        model.eval()  # ... but not in eval mode, which is deterministic and leaves the running stats alone
        stats = [m.running_mean.clone() for m in norms]
        first, second = model(x)[0], model(x)[0]
        assert torch.equal(first, second)
        assert torch.allclose(model(x[:1])[0], first[:1], atol=1e-6)
        assert all(torch.equal(m.running_mean, s) for m, s in zip(norms, stats))
        norms[0].running_mean.add_(1.0)  # eval output follows the running statistics
        assert not torch.allclose(model(x)[0], first, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"bias": False, "tie_weights": True}])
def test_transformer_step_equals_forward_through_boundaries_reorders_and_the_slide(overrides):
    """Decoding goes through the same blocks as `forward`: through boundary tokens mid-row (a new item: positions
    restart, earlier keys hidden), a reorder that drops and repeats rows, and past block_size (the window slides)."""
    model = make("transformer", **overrides)
    train_steps(model, steps=5)
    model.eval()
    batch = 5
    length = model.config.block_size + 3
    idx = random_tokens(batch).repeat(1, 2)[:, :length]
    idx[:, 0] = BOUNDARY
    idx[1, 4] = idx[2, 3] = BOUNDARY
    rows = torch.tensor([3, 0, 2, 2])  # row 1 and 4 leave, row 2 twice
    cut = 4
    with torch.no_grad():
        state, steps = model.init_state(batch), []
        for t in range(length):
            if t == cut:
                state = model.reorder_state(state, rows)
            logits, state = model.step(idx[:, t] if t < cut else idx[rows, t], state)
            steps.append(logits)
        full, _ = model(idx)
    assert torch.allclose(torch.stack(steps[:cut], 1), full[:, :cut], atol=1e-5, rtol=1e-4)
    assert torch.allclose(torch.stack(steps[cut:], 1), full[rows, cut:], atol=1e-5, rtol=1e-4)


def test_transformer_decodes_repeat_exactly():
    """Cache buffers are allocated empty and may hold an earlier decode's keys and values: nothing may read them."""
    from makemore.generation.constraints import length_constraint
    from makemore.generation.sample import decode

    model = make("transformer")
    train_steps(model, steps=5)
    model.eval()
    constraint = length_constraint(model.vocab_size, 12)

    def items(seed: int) -> list[list[int]]:
        return [g.ids for g in decode(model, 40, constraint, generator=torch.Generator().manual_seed(seed))]

    first = items(0)
    for seed in (1, 2):  # leave other decodes' caches in freed memory
        items(seed)
    assert items(0) == first


def test_transformer_forward_hooks_see_training_and_decoding_alike():
    """One definition: `step` runs the same modules as `forward`, so hooks (--diagnostics records activations
    with them) see both."""
    model = make("transformer").eval()
    seen = []
    model.blocks[0].mlp[1].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    model.blocks[1].attn.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    C = model.config.n_embd
    with torch.no_grad():
        model(random_tokens(2)[:, :4])
        assert seen == [(2, 4, 4 * C), (2, 4, C)]
        model.step(torch.full((2,), BOUNDARY), model.init_state(2))
    assert seen[2:] == [(2, 1, 4 * C), (2, 1, C)]


def test_transformer_step_does_not_recompute_the_prefix():
    model = make("transformer")
    model.eval()
    full_reads = []  # calls of the full-window forward: only once the window has to slide
    run = model._run
    model._run = lambda idx, state=None: full_reads.append(tuple(idx.shape)) or run(idx, state)
    state = model.init_state(2)
    bs = model.config.block_size
    with torch.no_grad():
        for t in range(bs):
            _, state = model.step(torch.full((2,), t % V), state)
        assert full_reads == []
        assert state.keys.shape[:4] == (bs, model.config.n_layer, 2, model.config.n_head)
        assert bool((state.keys.abs().sum(-1) > 0).all())  # every position of every layer written, one per step
        model.step(torch.full((2,), 1), state)
    assert full_reads == [(2, bs)]


def test_wavenet_state_is_a_fixed_size_buffer():
    model = make("wavenet")
    model.eval()
    state = model.init_state(3)
    sizes = [q.shape for q in state["queues"]]
    with torch.no_grad():
        for t in range(T):
            _, state = model.step(torch.full((3,), t % V), state)
    assert [q.shape for q in state["queues"]] == sizes  # one queue of d_l past inputs per layer: O(1) per token


def test_irnn_identity_init():
    model = make("rnn", identity_init=True, nonlinearity="relu")
    for name, p in model.rnn.named_parameters():
        if name.startswith("weight_hh"):
            assert torch.equal(p, torch.eye(p.size(0)))
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_weight_drop_masks_the_recurrence_while_training_only(name):
    dropped, plain = make(name, weight_drop=0.5, dropout=0.0), make(name, dropout=0.0)
    plain.load_state_dict(dropped.state_dict())
    before = {key: value.clone() for key, value in dropped.state_dict().items()}
    idx = torch.randint(0, V, (4, T))
    a, b = dropped.train()(idx)[0], plain.train()(idx)[0]
    assert torch.allclose(a[:, 0], b[:, 0])  # the first step reads the initial state (zeros): no recurrence yet
    assert not torch.allclose(a[:, 1:], b[:, 1:])  # later steps go through the masked hidden-to-hidden weights
    a.sum().backward()
    grad = dropped.rnn.weight_hh_l0.grad
    assert 0 < (grad == 0).float().mean() < 1  # masked entries get no gradient, the others do
    assert all(torch.equal(before[key], value) for key, value in dropped.state_dict().items())  # weights untouched
    assert torch.equal(dropped.eval()(idx)[0], plain.eval()(idx)[0])  # evaluation and decoding: no mask


def test_transformer_attention_maps_are_causal_distributions():
    model = make("transformer")
    model.eval()
    idx = random_tokens(2)[:, : model.config.block_size]
    maps = model.attention_maps(idx)
    assert len(maps) == model.config.n_layer
    for weights in maps:
        assert weights.shape == (2, model.config.n_head, idx.size(1), idx.size(1))
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.count_nonzero(weights.triu(1)) == 0  # no query looks ahead


PACKABLE_MODELS = [name for name in MODELS if not callable(TINY.get(name)) and make(name).packable]


def test_some_models_read_packed_rows():
    assert {"transformer", "wavenet"} <= set(PACKABLE_MODELS)


@pytest.mark.parametrize("name", PACKABLE_MODELS)
def test_packed_rows_give_the_same_loss(name):
    """Several items in one row (PackedSampler) give exactly the loss of the same items one per row: packing is a
    speed choice only. Train mode too (no dropout): BatchNorm statistics see the same real positions."""
    model = make(name, **({"dropout": 0.0} if "dropout" in _fields(name) else {}))
    train_steps(model, steps=3)
    x, y = PackedSampler(split(), batch_size=6, seed=0).next()
    items = []
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        starts = [t for t, (a, b) in enumerate(zip(row_x, row_y)) if a == BOUNDARY and b != IGNORE]
        for start, end in zip(starts, starts[1:] + [sum(b != IGNORE for b in row_y)]):
            assert row_y[end - 1] == BOUNDARY  # an item ends where the next begins
            items.append(VOCAB.decode(row_x[start + 1 : end]))
    assert len(items) > len(x), "rows should hold several items each"
    one_per_row = LineSplit(items, VOCAB).rows(torch.arange(len(items)))
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            packed = model(x, y)[1].item()
            separate = model(*one_per_row)[1].item()
        assert packed == pytest.approx(separate, abs=1e-5), mode


def test_fast_dropout_keeps_the_expected_fraction_and_mean():
    from makemore.models.base import Dropout

    drop = Dropout(0.2)
    x = torch.ones(200_000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - (1 - 51 / 256)) < 0.005  # p rounded to 51/256
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout: the expectation is unchanged
    assert not torch.equal(drop(x), y)  # fresh randomness every call
    drop.eval()
    assert torch.equal(drop(x), x)
    x = torch.randn(64, 8, requires_grad=True)
    drop.train()
    out = drop(x)
    out.sum().backward()
    assert torch.allclose(x.grad, (out != 0).float() * drop.scale)  # the gradient goes through the kept units only


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_wavenet_without_batch_norm_decodes_like_forward(norm):
    model = make("wavenet", norm=norm)
    assert not has_batch_norm(model)
    train_steps(model, steps=3)
    model.eval()
    idx = random_tokens(3)
    with torch.no_grad():
        full, _ = model(idx)
        state = model.init_state(3)
        steps = []
        for t in range(T):
            logits, state = model.step(idx[:, t], state)
            steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
