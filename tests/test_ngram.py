import itertools
import math
from collections import Counter

import pytest
import torch
from conftest import NAMES

from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.models.ngram import NGram, NGramConfig, context_windows
from makemore.runs import checkpoint as ckpt
from makemore.training.evaluation import evaluate

TRAIN = NAMES[:22]
VAL = ["chloe", "victoria", "madison", "eleanor", "grace", "nora", "riley", "zoey", "emma", "bella"]


def fitted(items, config: NGramConfig, val_items=None):
    vocab = Vocab.from_texts(items + (val_items or []))
    model = NGram(config, vocab.size)
    model.fit(LineSplit(items, vocab), LineSplit(val_items, vocab) if val_items else None)
    return model, vocab


@pytest.mark.parametrize(
    "config",
    [NGramConfig(order=n, smoothing="add-k", k=0.3) for n in (1, 2, 3, 5)]
    + [NGramConfig(order=n, smoothing="kneser-ney", tune_discounts=False) for n in (1, 2, 3, 5)]
    + [NGramConfig(order=4, smoothing="kneser-ney", tune_discounts=True)],
)
def test_every_context_gets_a_distribution_with_no_zeros(config):
    model, vocab = fitted(TRAIN, config, VAL)
    V, width = vocab.size, model.order - 1
    if V**width <= 5000:  # every possible context, including ones the data cannot produce
        contexts = torch.tensor(list(itertools.product(range(V), repeat=width)), dtype=torch.long)
        contexts = contexts.view(V**width, width)
    else:  # every context in the data (seen and unseen), plus random ones
        seen = context_windows(LineSplit(TRAIN + VAL, vocab).inputs, width).reshape(-1, width)
        contexts = torch.cat([seen, torch.randint(0, V, (2000, width))])
    probs = model.log_probs(contexts).exp()  # (contexts, V), float64
    assert torch.allclose(probs.sum(-1), torch.ones(len(contexts), dtype=torch.float64), atol=1e-12)
    assert (probs > 0).all()  # unseen characters (here: those only in val) keep a non-zero probability


def test_kneser_ney_bigram_equals_the_hand_computed_values():
    # Items ab, ab, b; V = 3 (0 = boundary, 1 = a, 2 = b). Sequences: 0ab0, 0ab0, 0b0.
    # Order 2 (top, raw counts): 0a:2 ab:2 b0:3 0b:1 -> n1=1 n2=2 n3=1 n4=0, Y = 1/(1+4) = 0.2,
    #   D1 = 1 - 2*0.2*2/1 = 0.2, D2 = 2 - 3*0.2*1/2 = 1.7, D3+ = 3 - 4*0.2*0/1 = 3.
    # Order 1 (continuation counts = distinct left neighbours): a:1 (0) b:2 (a, 0) end:1 (b) -> n1=2 n2=1 n3=0,
    #   Y = 2/(2+2) = 0.5, D1 = 1 - 2*0.5*1/2 = 0.5, D2 = 2 - 3*0.5*0/1 = 2, D3+: n3 = 0 -> fallback 1.5.
    # p1 = (c - D)/4 + (0.5*2 + 2*1)/4 * 1/3:  a 0.125+0.25 = 0.375, b 0+0.25 = 0.25, end 0.375.
    # p2(.|0): a:2 b:1, total 3, freed 1.7 + 0.2 = 1.9:  a (2-1.7)/3 + 1.9/3*0.375 = 0.3375,
    #   b (1-0.2)/3 + 1.9/3*0.25 = 0.425, end 1.9/3*0.375 = 0.2375.
    # p2(.|a): b:2, total 2, freed 1.7:  b 0.3/2 + 0.85*0.25 = 0.3625, a 0.85*0.375 = 0.31875, end 0.31875.
    model, vocab = fitted(["ab", "ab", "b"], NGramConfig(order=2, tune_discounts=False))
    assert vocab.size == 3
    probs = model.log_probs(torch.tensor([[0], [1]])).exp()
    expected = torch.tensor([[0.2375, 0.3375, 0.425], [0.31875, 0.31875, 0.3625]], dtype=torch.float64)
    assert torch.allclose(probs, expected, atol=1e-12)


def test_start_padding_is_not_counted_as_longer_contexts():
    # Same corpus, order 3. The context (0, 0) before the first character is padding in front of (0): it must give
    # the order-2 estimate undiscounted, not a trigram estimate of its own. The order-2 table is now below the top:
    # 0a:2 0b:1 (start n-grams keep raw counts), ab:1 (left neighbours of "ab": 0), b0:2 (a, 0) -> n1=2 n2=2 n3=0,
    # Y = 1/3, D1 = 1 - 2/3*2/2 = 1/3, D2 = 2 - 0 = 2. p(a | 0 0) = (2 - 2)/3 + (1/3 + 2)/3 * p1(a) = 7/9 * 0.375.
    model, _ = fitted(["ab", "ab", "b"], NGramConfig(order=3, tune_discounts=False))
    assert model.log_probs(torch.tensor([[0, 0]])).exp()[0, 1].item() == pytest.approx(7 / 9 * 0.375, abs=1e-12)


def reference_kneser_ney(items: list[str], vocab: Vocab, order: int):
    """A slow, independent implementation: histories hold ONE start symbol (never padding), as in KenLM."""
    V = vocab.size
    seqs = [[0] + vocab.encode(item) + [0] for item in items]
    raw = [Counter() for _ in range(order + 1)]
    for s in seqs:
        for i in range(1, len(s)):
            for m in range(1, min(order, i + 1) + 1):
                raw[m][tuple(s[i - m + 1 : i + 1])] += 1
    counts = [None] * (order + 1)
    counts[order] = raw[order]
    for m in range(1, order):
        left = Counter(gram[1:] for gram in raw[m + 1])  # one per distinct left neighbour
        counts[m] = Counter({g: (c if m >= 2 and g[0] == 0 else left[g]) for g, c in raw[m].items()})

    def discounts(table):
        n = [sum(1 for c in table.values() if c == k) for k in range(1, 5)]
        y = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] else 0.5
        return [min(max(k - (k + 1) * y * n[k] / n[k - 1], 0.01), k) if n[k - 1] else 0.5 * k for k in (1, 2, 3)]

    D = [None] + [discounts(counts[m]) for m in range(1, order + 1)]

    def prob(history: tuple, w: int, m: int) -> float:
        if m == 0:
            return 1 / V
        context = history[len(history) - (m - 1) :] if m > 1 else ()
        table = counts[m]
        row = {g[-1]: c for g, c in table.items() if g[:-1] == context}
        lower = prob(history, w, m - 1)
        total = sum(row.values())
        if total == 0:
            return lower
        d = lambda c: D[m][min(c, 3) - 1] if c else 0.0  # noqa: E731
        freed = sum(d(c) for c in row.values())
        return (row.get(w, 0) - d(row.get(w, 0))) / total + freed / total * lower

    def item_logprobs(item: str) -> list[float]:
        s = [0] + vocab.encode(item) + [0]
        out = []
        for i in range(1, len(s)):
            history = tuple(s[max(0, i - order + 1) : i])  # at most order-1 symbols, one start symbol at most
            out.append(math.log(prob(history, s[i], len(history) + 1)))
        return out

    return item_logprobs


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_an_independent_reference(order):
    items = TRAIN * 2 + ["ava", "mia", "em", "e"]
    model, vocab = fitted(items, NGramConfig(order=order, tune_discounts=False), VAL)
    reference = reference_kneser_ney(items, vocab, order)
    split = LineSplit(VAL + ["emma", "e"], vocab)
    logprobs = model(split.inputs)[0].double().log_softmax(-1)
    for row, item in enumerate(split.items):
        expected = reference(item)
        got = logprobs[row, torch.arange(len(expected)), split.targets[row, : len(expected)]]
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-5), item


def test_order_auto_picks_the_order_with_the_best_val_nll():
    items = TRAIN * 3
    nll = {}
    for n in range(1, 7):
        model, vocab = fitted(items, NGramConfig(order=n, tune_discounts=False), VAL)
        nll[n] = evaluate(model, LineSplit(VAL, vocab).eval_batches(64))["nll"]
    auto, _ = fitted(items, NGramConfig(order=0, tune_discounts=False, max_order=6), VAL)
    best = min(nll, key=nll.get)
    assert auto.order == best  # (a higher order must win by 1e-3 nats: none comes that close here)
    assert all(abs(nll[best] - nll[n]) > 1e-3 for n in nll if n != best)
    # on its own training data the highest order always looks best: the choice really comes from val
    overfit, _ = fitted(items, NGramConfig(order=0, tune_discounts=False, max_order=6), items)
    assert overfit.order > auto.order


def test_tuned_discounts_lower_val_nll_and_survive_save_and_load(tmp_path):
    items = TRAIN * 3
    standard, vocab = fitted(items, NGramConfig(order=4, tune_discounts=False), VAL)
    tuned, _ = fitted(items, NGramConfig(order=4, tune_discounts=True), VAL)
    val = LineSplit(VAL, vocab)
    assert evaluate(tuned, val.eval_batches(64))["nll"] < evaluate(standard, val.eval_batches(64))["nll"]
    assert not torch.equal(tuned.discounts, standard.discounts)

    auto, _ = fitted(items, NGramConfig(order=0), VAL)
    path = tmp_path / "model.safetensors"
    ckpt.save_tensors(path, auto.state_dict())
    loaded = NGram(NGramConfig(order=0), vocab.size)
    ckpt.load_weights(loaded, path)
    assert loaded.order == auto.order and torch.equal(loaded.discounts, auto.discounts)
    assert torch.equal(loaded(val.inputs)[0], auto(val.inputs)[0])


@pytest.mark.parametrize(
    "config",
    [NGramConfig(order=4, tune_discounts=False), NGramConfig(order=3, smoothing="add-k"), NGramConfig(order=1)],
)
def test_incremental_steps_equal_the_full_forward(config):
    model, vocab = fitted(TRAIN, config, VAL)
    split = LineSplit(VAL, vocab)
    full, _ = model(split.inputs)  # (B, T, V)
    state = model.init_state(len(split))
    for t in range(split.inputs.size(1)):
        logits, state = model.step(split.inputs[:, t], state)
        assert torch.allclose(logits, full[:, t], atol=1e-6)
    kept = torch.tensor([2, 0])
    assert torch.equal(model.reorder_state(state, kept), state[kept])


def test_choices_on_val_need_a_val_split():
    vocab = Vocab.from_texts(TRAIN)
    for config in (NGramConfig(order=0, tune_discounts=False), NGramConfig(order=3, tune_discounts=True)):
        with pytest.raises(MakemoreError, match="need a val split"):
            NGram(config, vocab.size).fit(LineSplit(TRAIN, vocab), None)
    NGram(NGramConfig(order=3, tune_discounts=False), vocab.size).fit(LineSplit(TRAIN, vocab), None)
