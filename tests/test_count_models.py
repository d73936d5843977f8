import math

import pytest
import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.training.evaluation import evaluate


def fitted_bigram(items, k):
    vocab = Vocab.from_texts(items)
    model = build_model("ngram", MODELS["ngram"].config_class(order=2, smoothing="add-k", k=k), vocab.size)
    split = LineSplit(items, vocab)
    model.fit(split)
    return model, split


def test_count_bigram_nll_equals_hand_computed_value():
    # Items ab, ba, a; V = 3 (boundary, a, b). Bigram counts by context:
    #   boundary -> a:2 b:1 end:0   a -> b:1 end:2   b -> end:1 a:1
    # add-1: p(a|^)=3/6 p(b|^)=2/6 p(b|a)=2/6 p($|a)=3/6 p($|b)=2/5 p(a|b)=2/5
    model, split = fitted_bigram(["ab", "ba", "a"], k=1.0)
    logps = [3 / 6, 2 / 6, 2 / 5, 2 / 6, 2 / 5, 3 / 6, 3 / 6, 3 / 6]  # ^ab$, ^ba$, ^a$
    expected = -sum(math.log(p) for p in logps) / len(logps)
    result = evaluate(model, split.eval_batches(2))
    assert result["tokens"] == 8
    assert result["nll"] == pytest.approx(expected, abs=1e-6)


def test_count_model_rows_are_distributions_with_unseen_characters_possible():
    model, split = fitted_bigram(["ab", "ba", "a", "c"], k=0.5)
    logits, _ = model(split.inputs)
    probs = logits.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-6)
    assert (probs > 0).all()


def test_neural_bigram_converges_to_the_count_bigram(names_file):
    items = names_file.read_text().split()
    count_model, split = fitted_bigram(items, k=1e-4)
    target = evaluate(count_model, split.eval_batches(512))["nll"]
    vocab = Vocab.from_texts(items)
    model = build_model("bigram", MODELS["bigram"].config_class(l2=0.0), vocab.size)
    # Full-batch Adam with a cosine-to-zero schedule: a plain loop, so this stays fast; the trainer has its own tests.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1500)
    for _ in range(1500):
        _, loss = model(split.inputs, split.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    reached = evaluate(model, split.eval_batches(512))["nll"]
    assert reached == pytest.approx(target, abs=0.01)
