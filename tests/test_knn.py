"""A network with a memory of its training states (models/knn.py, `makemore knn`): the neighbours' distribution,
the settings chosen on val, the run directory, determinism and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NAMES
from helpers import run_cli

import makemore
from makemore.api import train
from makemore.data.lines import LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.models.knn import KNNLM, TEMPERATURES, KNNConfig, choose_settings, distinct_states, neighbour_counts
from makemore.models.knn_search import cell_neighbours, exact_distances, exact_neighbours, group

VOCAB = Vocab.from_texts(NAMES)


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("knn")
    data = root / "names.txt"
    data.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    out = root / "gru"
    train(data, model="gru", out=out, samples=0, max_steps=60, n_embd=8, n_hidden=16, seed=3)
    return out


def tiny(lam: float = 0.5, temperature: float = 1.0, k: int = 3) -> KNNLM:
    torch.manual_seed(0)
    gru = build_model("gru", MODELS["gru"].config_class(n_embd=8, n_hidden=16, n_layer=1), VOCAB.size)
    model = KNNLM(KNNConfig(dim=4, k=k, lam=lam, temperature=temperature), VOCAB.size, [gru])
    model.fit(LineSplit(NAMES, VOCAB))  # no val: the config's settings stay
    return model.eval()


def test_distinct_states_count_what_followed_each_state():
    keys = torch.tensor([[1.0, 2.0], [0.5, 0.0], [1.0, 2.0], [1.0, 2.0]]).half()
    unique, offsets, tokens, counts = distinct_states(keys, torch.tensor([3, 1, 3, 0]), 4)
    assert unique.tolist() == [[0.5, 0.0], [1.0, 2.0]]  # sorted, each once
    assert offsets.tolist() == [0, 1, 3]  # [0.5, 0] was followed by one token, [1, 2] by two
    assert tokens.tolist() == [1, 0, 3] and counts.tolist() == [1, 1, 2]


def dense_counts(model: KNNLM) -> torch.Tensor:
    """(N, V): how often each token followed each stored state, from the memory's sparse pairs."""
    counts = torch.zeros(model.config.n_keys, model.vocab_size, dtype=torch.float64)
    for j in range(model.config.n_keys):
        for p in range(model.offsets[j], model.offsets[j + 1]):
            counts[j, model.next_tokens[p]] += model.next_counts[p]
    return counts


def test_the_prediction_is_the_interpolation_of_the_neighbours_and_the_network():
    """Recomputed here by brute force: every distinct state's distance, the k nearest, softmax(-d / T) weights
    times what followed them, mixed with the network's softmax."""
    model = tiny(lam=0.4, temperature=2.0)
    x, _ = LineSplit(["emma", "zoey"], VOCAB).rows(torch.arange(2))
    with torch.no_grad():
        got = model(x)[0]
        captured = []
        hook = model.net.lm_head.register_forward_hook(lambda m, i, o: captured.append(i[0]))
        net_logits = model.net(x)[0]
        hook.remove()
    queries = model.project(captured[0]).reshape(-1, 4).double()
    keys, counts = model.keys.double(), dense_counts(model)
    for q, logits, out in zip(queries, net_logits.reshape(-1, VOCAB.size), got.reshape(-1, VOCAB.size)):
        d = ((keys - q) ** 2).sum(1)
        near = d.argsort()[:3]
        w = torch.exp(-(d[near] - d[near].min()) / 2.0)
        mass = (w[:, None] * counts[near]).sum(0)
        want = 0.4 * mass / mass.sum() + 0.6 * torch.softmax(logits.double(), -1)
        assert torch.allclose(out.double().exp(), want, atol=1e-5)


def test_a_training_item_is_remembered():
    """Every training name's states are in the memory: with the neighbours' weight near 1 and a small temperature,
    the next character of a training prefix is what followed it in train."""
    model = tiny(lam=0.99, temperature=1e-3)
    forgetful = tiny(lam=0.0)
    items = LineSplit(NAMES[:10], VOCAB)
    x, y = items.rows(torch.arange(10))
    with torch.no_grad():
        assert model(x, y)[1].item() < 0.7 * forgetful(x, y)[1].item()


def test_settings_are_chosen_on_val_and_never_worse_than_the_network():
    model = tiny()
    val = LineSplit(["amelia", "nora", "ella", "layla", "mia", "grace"], VOCAB)
    chosen = choose_settings(model, val)
    assert chosen["val_nll"] <= chosen["net_val_nll"]
    model.config.temperature, model.config.lam = chosen["chosen"]
    x, y = val.rows(torch.arange(len(val)))
    with torch.no_grad():  # the model scores what the choice measured
        nll = model(x, y)[1].item()
    assert nll == pytest.approx(chosen["val_nll"], abs=1e-4)


def test_the_targets_counts_give_the_neighbours_distribution_at_every_temperature():
    """choose_settings reads each val target's counts among the neighbours once and reweights them per temperature:
    that must be what knn_probs (the prediction) gives that target."""
    model = tiny(k=5)
    val = LineSplit(["amelia", "nora", "ella", "zoey"], VOCAB)
    x, y = val.rows(torch.arange(len(val)))
    captured = []
    hook = model.net.lm_head.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        model.net(x)
    hook.remove()
    real = y != -1
    targets = y[real]
    distances, indices = model.neighbours(model.project(captured[0][real]), 5)
    hits, totals = neighbour_counts(model, indices, targets)
    nearest = distances.double() - distances[:, :1].double()
    for temperature in (0.3, 1.0, 7.0):
        weights = torch.exp(-nearest / temperature)
        want = model.knn_probs(distances, indices, temperature).gather(1, targets[:, None])[:, 0]
        assert torch.allclose((weights * hits).sum(1) / (weights * totals).sum(1), want, atol=1e-12)


def test_the_temperature_grid_is_fine_and_keeps_the_old_points():
    """Val NLL is sharp in the temperature (a GRU's memory on names: 1.8917 at 5, 1.8877 at 7): neighbouring points
    at most ~19% apart, and the first grid's points kept so that a choice is never worse than it was."""
    grid = sorted(TEMPERATURES)
    assert {1.0, 2.0, 5.0, 10.0, 20.0, 50.0} <= set(grid)
    assert max(b / a for a, b in zip(grid, grid[1:])) <= 2**0.25 + 1e-9


def test_keys_loaded_later_are_the_ones_searched():
    """The keys are converted to float32 once and kept (models/knn.py float_keys): loading other keys must
    replace them, as a model that never searched before loading them shows."""
    model, fresh = tiny(lam=0.9), tiny(lam=0.9)
    x, _ = LineSplit(["emma", "zoey"], VOCAB).rows(torch.arange(2))
    state = model.state_dict()
    state["keys"] = (state["keys"].float() * -1.5).half()
    with torch.no_grad():
        before = model(x)[0]  # searches: the float32 keys are made
        model.load_state_dict(state)
        fresh.load_state_dict(state)
        after = model(x)[0]
        assert not torch.allclose(after, before)
        assert torch.equal(after, fresh(x)[0])


def clustered_keys(n: int = 3000, dim: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, dim, generator=generator) * 4
    return (centres[torch.randint(40, (n,), generator=generator)] + torch.randn(n, dim, generator=generator)).half()


def test_cells_hold_every_key_once_each_in_its_nearest_cell():
    keys = clustered_keys().float()
    centres, order, starts = group(keys, 32)
    assert sorted(order.tolist()) == list(range(len(keys)))  # a permutation
    sizes = starts.diff()
    assert starts[0] == 0 and starts[-1] == len(keys) and (sizes > 0).all() and len(centres) == len(sizes) <= 32
    cell_of_key = torch.repeat_interleave(torch.arange(len(centres)), sizes)
    nearest = exact_neighbours(keys[order], centres.float(), 1)[1][:, 0]
    assert torch.equal(nearest, cell_of_key)
    again = group(keys, 32)
    assert all(torch.equal(a, b) for a, b in zip((centres, order, starts), again))  # seeded: the same cells


def test_searching_every_cell_is_exact_search():
    keys = clustered_keys().float()
    centres, order, starts = group(keys, 32)
    queries = torch.randn(200, 8) * 4
    exact = exact_neighbours(queries, keys[order], 10)
    cells = cell_neighbours(queries, keys[order], centres.float(), starts, 10, probes=len(centres))
    assert torch.equal(exact[1], cells[1]) and torch.allclose(exact[0], cells[0])


def test_searching_some_cells_finds_the_nearest_keys_of_those_cells():
    keys = clustered_keys().float()
    centres, order, starts = group(keys, 32)
    keys = keys[order]
    queries = torch.randn(50, 8) * 4
    distances, indices = cell_neighbours(queries, keys, centres.float(), starts, 10, probes=3)
    near_cells = exact_neighbours(queries, centres.float(), 3)[1]
    for q, cells, found in zip(queries, near_cells, indices):
        allowed = torch.cat([torch.arange(starts[c], starts[c + 1]) for c in cells.tolist()])
        best = allowed[((keys[allowed] - q) ** 2).sum(1).argsort()[:10]]
        assert set(found.tolist()) == set(best.tolist())


def test_neighbour_distances_are_computed_again_in_float64():
    keys = (clustered_keys().float() + 20).half().float()  # |key|^2 ~ 3000: float32 keeps ~4 decimals
    queries = torch.randn(100, 8) + 20
    found, indices = exact_neighbours(queries, keys, 16)
    exact = exact_distances(queries, keys, indices, found)
    near, q = keys[indices].double(), queries.double()[:, None, :]
    want = (near * near).sum(-1) - 2 * (near * q).sum(-1)
    assert (exact - want).abs().max() < 1e-9 < (found.double() - want).abs().max()


@pytest.mark.parametrize("cells", [None, 8])
def test_knn_run_loads_samples_and_evaluates_as_fitted(cells, gru_run, tmp_path, capsys):
    argv = ["--cells", str(cells), "--probes", "2"] if cells else []
    code, stdout, _ = run_cli(capsys, "knn", gru_run, "--out", tmp_path / "knn", "--dim", "6", "--k", "8", *argv)
    assert code == 0 and "distinct states" in stdout and ("in 8 cells" in stdout) == bool(cells)
    run = makemore.load(tmp_path / "knn")
    assert run.model_name == "knn" and len(run.generate(5, seed=1).items) == 5
    code, stdout, _ = run_cli(capsys, "info", tmp_path / "knn")
    assert code == 0 and "knn" in stdout
    fitted = run.spec.data["knn"]
    assert fitted["val_nll"] <= fitted["net_val_nll"]
    code, stdout, _ = run_cli(capsys, "eval", tmp_path / "knn", "--split", "val", "--format", "json")
    import json

    assert json.loads(stdout)["val"]["nll"] == pytest.approx(fitted["val_nll"], abs=1e-4)
    items = run.score(["emma", "zoey"])
    assert all(math.isfinite(r["logprob"]) for r in items)


def test_the_same_run_gives_the_same_memory(gru_run, tmp_path, capsys):
    for name in ("a", "b"):
        assert run_cli(capsys, "knn", gru_run, "--out", tmp_path / name, "--cells", "8")[0] == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_refusals_are_one_line(gru_run, tmp_path, capsys):
    data = tmp_path / "names.txt"
    data.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    train(data, model="ngram", out=tmp_path / "ngram", samples=0)
    cases = [
        ([tmp_path / "ngram", "--out", tmp_path / "o1"], "rnn, gru and lstm"),
        ([gru_run, "--out", tmp_path / "o2", "--k", "0"], "--k must be"),
        ([gru_run, "--out", tmp_path / "o2", "--cells", "-1"], "--cells must be"),
        ([gru_run, "--out", tmp_path / "o2", "--probes", "0"], "probes must be"),
        ([tmp_path / "missing", "--out", tmp_path / "o3"], "missing"),
        ([gru_run, "--out", gru_run], "one of the runs"),
    ]
    for argv, message in cases:
        code, _, stderr = run_cli(capsys, "knn", *argv)
        assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    code, _, stderr = run_cli(capsys, "train", "-i", data, "--model", "knn", "-o", tmp_path / "o4")
    assert code == 2 and "makemore knn" in stderr
