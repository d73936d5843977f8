"""`makemore serve`'s speed-ups for its sampling workers change no number: the lean transformer step
(models/transformer_step.py) gives the model's logits bit for bit, the served run generates what the Python API does,
and the nearest-data-item search in one call finds what the bucket scan finds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")

from conftest import NAMES  # noqa: E402

import makemore  # noqa: E402

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A directory with a tiny transformer ("tf") trained on the conftest names."""
    root = tmp_path_factory.mktemp("serve-speed")
    data = root / "names.txt"
    data.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    makemore.train(data, model="transformer", out=root / "runs" / "tf", max_steps=30, samples=0, **TINY)
    return root / "runs"


def test_the_lean_step_is_the_models_step_bit_for_bit():
    """models.transformer_step: every logit of every step equal to Transformer.step's (with and without biases, items
    that start mid-row, rows reordered, a window that slides, the cached first step)."""
    from makemore.models import transformer_step as fast_step
    from makemore.models.transformer import Transformer, TransformerConfig

    for bias in (True, False):
        config = TransformerConfig(block_size=5, n_layer=2, n_head=2, n_embd=16, bias=bias, dropout=0.0)
        model = Transformer(config, 7).eval()
        assert fast_step.install(model) and isinstance(model.step, fast_step.TransformerStep)
        tokens = torch.randint(1, 7, (9, 6))
        tokens[0], tokens[4, :3] = 0, 0  # boundaries: items start at t = 0 and, in three rows, at t = 4
        with torch.inference_mode():
            for _ in range(2):  # the second time, the first step comes from the cache
                ours, theirs = model.init_state(1), model.init_state(1)
                for token in (0, 3, 5):
                    a, theirs = Transformer.step(model, torch.tensor([token]), theirs)
                    b, ours = model.step(torch.tensor([token]), ours)
                    assert torch.equal(a, b)
            ours, theirs = model.init_state(6), model.init_state(6)
            for t in range(9):  # t >= 5: the window slides (the model's own step)
                a, theirs = Transformer.step(model, tokens[t], theirs)
                b, ours = model.step(tokens[t], ours)
                assert torch.equal(a, b), (bias, t)
                if t == 2:
                    rows = torch.tensor([5, 0, 0, 2, 3, 1])
                    theirs, ours = model.reorder_state(theirs, rows), model.reorder_state(ours, rows)
    assert not fast_step.install(torch.nn.Linear(2, 2))


def test_the_served_run_generates_what_the_python_api_does(runs_dir):
    """The worker's run (lean step, nearest in one call) gives `makemore.load(run).generate`'s items, log-probs and
    nearest data items exactly, under every kind of request."""
    from makemore.serve.runs import RunTable

    served, plain = RunTable([runs_dir]).load("tf"), makemore.load(runs_dir / "tf")
    assert "step" in vars(served.model) and "step" not in vars(plain.model)
    requests = [{"n": 20}, {"n": 5, "prefix": "el"}, {"n": 12, "suffix": "a", "temperature": 0.8, "top_k": 6},
                {"n": 9, "regex": "[a-m]+", "min_len": 4}, {"n": 10, "only_new": True, "min_distance": 2},
                {"best": 4}, {"beam": 3}, {"n": 6, "particles": 4, "suffix": "y"}]  # fmt: skip
    for request in requests:
        for seed in range(3):
            ours = served.generate(**request, seed=seed).items
            assert ours == plain.generate(**request, seed=seed).items and ours, request


def test_nearest_in_one_call_is_the_bucket_scan(monkeypatch):
    """Both searches find the same nearest data item (ties broken alike) and distance, with and without a bound."""
    import random

    from makemore.generation import novelty
    from makemore.generation.novelty import NoveltyIndex

    rng = random.Random(0)
    words = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 8))) for _ in range(400)]  # many ties
    index = NoveltyIndex(words[:300], held_out=words[300:350])
    calls = []
    one_call = NoveltyIndex._nearest_in_one_call
    monkeypatch.setattr(NoveltyIndex, "_nearest_in_one_call", lambda *a: calls.append(1) or one_call(*a))
    for max_distance in (None, 2, 3):
        for start in range(300, 400, 10):
            queries = words[start : start + 10] + ["abcabcabcabc", "cccccccccccccc", "a"]
            monkeypatch.setattr(novelty, "ONE_CALL_QUERIES", 0)
            scan = index.nearest(queries, max_distance)
            monkeypatch.setattr(novelty, "ONE_CALL_QUERIES", 48)
            assert index.nearest(queries, max_distance) == scan
    assert len(calls) >= 20 and any(distance >= 3 for _, distance in scan)
