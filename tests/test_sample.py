"""The decoder: decoding options, seeds, batched/incremental = naive recompute, beam search = exhaustive search."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter

import pytest
import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.generation.constraints import ConstraintSpec, build_constraint, length_constraint
from makemore.generation.sample import DecodeOptions, decode, decode_smc, generate, generate_recompute
from makemore.generation.scoring import score_items
from makemore.generation.search import beam_search
from makemore.models import MODELS, build_model
from makemore.models.ngram import NGramConfig

TINY_ITEMS = ["ab", "abc", "ba", "c", "aab", "bca", "cab", "a", "ab", "ca", "bb", "acb"]


def count_bigram(items: list[str] = TINY_ITEMS) -> tuple[torch.nn.Module, Vocab]:
    """The count bigram (order-2 n-gram, add-k), fitted in closed form on a tiny corpus over {a, b, c}."""
    vocab = Vocab.from_texts(items)
    model = build_model("ngram", NGramConfig(order=2, smoothing="add-k", k=0.5, tune_discounts=False), vocab.size)
    model.fit(LineSplit(items, vocab))
    return model.eval(), vocab


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TINY_SIZES = {
    "n_embd": 8,
    "n_hidden": 16,
    "n_layer": 2,
    "n_head": 2,
    "block_size": 6,
    "order": 3,
    "tune_discounts": False,
}


def tiny_model(name: str, vocab_size: int):
    """A small instance of a registered model (the sizes its config has), fitted if it is a count model."""
    config_class = MODELS[name].config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    model = build_model(name, config_class(**{k: v for k, v in TINY_SIZES.items() if k in fields}), vocab_size)
    if not model.trainable:
        split = LineSplit(TINY_ITEMS, Vocab([chr(ord("a") + i) for i in range(vocab_size - 1)]))
        model.fit(split, split)
    return model.eval()


def tiny_mlp(vocab_size: int = 8):
    return build_model("mlp", MODELS["mlp"].config_class(n_embd=4, n_hidden=16), vocab_size).eval()


def test_greedy_is_deterministic_and_ignores_the_seed():
    model, _ = count_bigram()
    c = length_constraint(model.vocab_size, 6)
    a = decode(model, 5, c, DecodeOptions(greedy=True), seeded(1))
    b = decode(model, 5, c, DecodeOptions(greedy=True), seeded(2))
    assert [g.ids for g in a] == [g.ids for g in b]
    assert len({tuple(g.ids) for g in a}) == 1


def test_top_k_1_and_tiny_temperature_equal_greedy():
    model = tiny_mlp()
    c = length_constraint(model.vocab_size, 10)
    greedy = [g.ids for g in decode(model, 20, c, DecodeOptions(greedy=True))]
    assert [g.ids for g in decode(model, 20, c, DecodeOptions(top_k=1), seeded(3))] == greedy
    assert [g.ids for g in decode(model, 20, c, DecodeOptions(temperature=1e-6), seeded(4))] == greedy
    # a high temperature does not
    assert [g.ids for g in decode(model, 20, c, DecodeOptions(temperature=5.0), seeded(4))] != greedy


def test_top_p_1_changes_nothing_and_small_top_p_narrows():
    model, vocab = count_bigram()
    c = length_constraint(model.vocab_size, 8)
    plain = [g.ids for g in decode(model, 200, c, DecodeOptions(), seeded(5))]
    assert [g.ids for g in decode(model, 200, c, DecodeOptions(top_p=1.0), seeded(5))] == plain
    narrow = [g.ids for g in decode(model, 200, c, DecodeOptions(top_p=0.01), seeded(5))]
    assert len({tuple(ids) for ids in narrow}) == 1  # only the top token survives at each step: the greedy item


def test_seeded_runs_repeat_and_seeds_differ():
    model = tiny_mlp()
    c = length_constraint(model.vocab_size, 12)
    first = [g.ids for g in decode(model, 30, c, DecodeOptions(temperature=0.9), seeded(7))]
    assert [g.ids for g in decode(model, 30, c, DecodeOptions(temperature=0.9), seeded(7))] == first
    assert [g.ids for g in decode(model, 30, c, DecodeOptions(temperature=0.9), seeded(8))] != first


def test_an_item_does_not_depend_on_the_batch_it_is_drawn_in():
    """Noise is drawn for all n output rows, so item i is the same whoever else finished earlier."""
    model = tiny_mlp()
    c = length_constraint(model.vocab_size, 12)
    many = [g.ids for g in decode(model, 40, c, DecodeOptions(), seeded(11))]
    assert [g.ids for g in decode(model, 40, c, DecodeOptions(), seeded(11), details=False)] == many


@pytest.mark.parametrize("n", [3, 24])  # 3: the small-batch path (sample._decode_small), 24: the batched one
@pytest.mark.parametrize("name", sorted(MODELS))
def test_incremental_batched_sampling_equals_naive_recompute(name, n):
    """Same seed: the stateful, shrinking-batch decoder gives the very items of the whole-prefix-every-step path,
    for every registered model (each one's own incremental state: context window, recurrent state, KV cache)."""
    torch.manual_seed(0)
    vocab_size = 7
    model = tiny_model(name, vocab_size)
    for constraint in (
        length_constraint(vocab_size, 9),
        length_constraint(vocab_size, 9, prefix_ids=[2, 1]),
        build_constraint(
            ConstraintSpec(max_len=9, regex="[a-d]*e[a-f]?", min_len=3), Vocab(["a", "b", "c", "d", "e", "f"])
        ),
    ):
        for options in (DecodeOptions(), DecodeOptions(temperature=0.7, top_k=4), DecodeOptions(greedy=True)):
            fast = [g.ids for g in decode(model, n, constraint, options, seeded(3), details=False)]
            naive = generate_recompute(model, n, constraint, options, seeded(3))
            assert fast == naive, (name, options)


def test_finished_rows_leave_the_batch():
    model = tiny_mlp()
    sizes: list[int] = []
    step = model.step

    def recording_step(idx, state):
        sizes.append(idx.numel())
        return step(idx, state)

    model.step = recording_step
    outputs = decode(model, 64, length_constraint(model.vocab_size, 30), DecodeOptions(), seeded(0))
    lengths = sorted(len(g.ids) for g in outputs)
    assert sizes[0] == 1  # the boundary is fed once, for one row, then copied
    assert sizes[1] <= model.vocab_size  # rows that drew the same first character share one state
    peak = sizes.index(64)  # from there on a row per item, until items end
    assert sizes[:peak] == sorted(sizes[:peak])
    assert sizes[peak:] == sorted(sizes[peak:], reverse=True) and sizes[-1] < 64
    assert len(sizes) - 1 == lengths[-1]  # one step per character of the longest item, no more


def test_rows_with_equal_items_so_far_share_one_state():
    """Prefix sharing is exact: the items equal those drawn with a state per row (the naive path)."""
    model = tiny_model("transformer", 7)
    for constraint in (length_constraint(7, 9), length_constraint(7, 9, prefix_ids=[3])):
        fast = [g.ids for g in decode(model, 200, constraint, DecodeOptions(), seeded(4), details=False)]
        assert fast == generate_recompute(model, 200, constraint, DecodeOptions(), seeded(4))


@pytest.mark.parametrize("n", [5, 20])  # the small-batch path and the batched one
@pytest.mark.parametrize("name", ["ngram", "bigram", "mlp"])
def test_reported_logprobs_match_the_scorer(name, n):
    """The per-step log-probs collected while sampling equal a separate forward pass over the finished items."""
    vocab = Vocab(list("abcdef"))
    model = build_model(
        name,
        MODELS[name].config_class(
            **({"order": 3, "smoothing": "add-k", "tune_discounts": False} if name == "ngram" else {})
        ),
        vocab.size,
    )
    if not model.trainable:
        model.fit(LineSplit(TINY_ITEMS + ["fed", "dee"], vocab))
    model.eval()
    outputs = decode(model, n, length_constraint(vocab.size, 40, prefix_ids=[1]), DecodeOptions(), seeded(2))
    scores = score_items(model, vocab, [vocab.decode(g.ids) for g in outputs])
    for g, s in zip(outputs, scores):
        assert g.model_logprob == pytest.approx(s["logprob"], abs=1e-4)
        assert g.token_logprobs == pytest.approx([lp for _, lp in s["char_logprobs"]], abs=1e-4)
        assert g.logprob >= g.model_logprob - 1e-9  # the forced prefix costs nothing once conditioned on


def test_sampling_frequencies_match_the_count_bigram_exactly():
    """A statistical test against the model's exact item probabilities (score_items)."""
    model, vocab = count_bigram()
    n = 20000
    counts = Counter(
        vocab.decode(g.ids)
        for g in decode(model, n, length_constraint(vocab.size, 30), DecodeOptions(), seeded(0), details=False)
    )
    top = [item for item, _ in counts.most_common(8)]
    for result in score_items(model, vocab, top):
        p = math.exp(result["logprob"])
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[result["item"]] / n - p) < 5 * sd, result["item"]


def all_strings(alphabet: str, max_len: int) -> list[str]:
    return ["".join(chars) for n in range(max_len + 1) for chars in itertools.product(alphabet, repeat=n)]


@pytest.mark.parametrize("length_penalty", [0.0, 0.7])
def test_wide_beam_equals_exhaustive_search(length_penalty):
    model, vocab = count_bigram()
    max_len = 5
    everything = score_items(model, vocab, all_strings("abc", max_len))
    ranked = sorted(everything, key=lambda r: -r["logprob"] / (len(r["item"]) + 1) ** length_penalty)
    k = 10
    found = beam_search(model, k, length_constraint(vocab.size, max_len), width=400, length_penalty=length_penalty)
    assert vocab.decode(found[0].ids) == ranked[0]["item"]
    assert [g.score for g in found] == pytest.approx(
        [r["logprob"] / (len(r["item"]) + 1) ** length_penalty for r in ranked[:k]], abs=1e-9
    )
    by_item = {r["item"]: r["logprob"] for r in everything}
    for g in found:
        assert g.model_logprob == pytest.approx(by_item[vocab.decode(g.ids)], abs=1e-9)


def test_beam_with_a_constraint_equals_exhaustive_search_over_matching_items():
    import re

    model, vocab = count_bigram()
    spec = ConstraintSpec(max_len=5, regex="a[abc]*b", prefix="a", min_len=3)
    matching = [s for s in all_strings("abc", 5) if re.fullmatch(spec.regex, s) and len(s) >= 3]
    ranked = sorted(score_items(model, vocab, matching), key=lambda r: -r["logprob"])
    found = beam_search(model, 6, build_constraint(spec, vocab), width=400)
    assert [g.model_logprob for g in found] == pytest.approx([r["logprob"] for r in ranked[:6]], abs=1e-9)
    assert all(re.fullmatch(spec.regex, vocab.decode(g.ids)) for g in found)


def test_narrow_beam_is_sorted_and_accept_filters():
    model, vocab = count_bigram()
    c = length_constraint(vocab.size, 6)
    found = beam_search(model, 5, c, accept=lambda ids: len(ids) >= 3)
    assert len(found) == 5 and all(len(g.ids) >= 3 for g in found)
    assert [g.score for g in found] == sorted((g.score for g in found), reverse=True)
    assert len({tuple(g.ids) for g in found}) == 5


def test_generate_keeps_its_simple_signature():
    model, _ = count_bigram()
    out = generate(model, 7, 4, DecodeOptions(), prefix=[1], generator=seeded(0))
    assert len(out) == 7 and all(ids[0] == 1 and len(ids) <= 4 for ids in out)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_particles_work_with_every_models_state(name):
    """Sequential Monte Carlo duplicates and drops rows mid-batch (reorder_state with repeated rows)."""
    import re

    vocab = Vocab(["a", "b", "c", "d", "e", "f"])
    model = tiny_model(name, vocab.size)
    spec = ConstraintSpec(max_len=8, regex="[a-d]*e[a-f]?", min_len=3, prefix="b")
    out = decode_smc(model, 5, 6, build_constraint(spec, vocab), 0.8, seeded(1))
    texts = [vocab.decode(g.ids) for g in out]
    assert len(texts) == 5 and all(
        re.fullmatch(spec.regex, t) and t.startswith("b") and 3 <= len(t) <= 8 for t in texts
    )
    assert all(g.logprob >= g.model_logprob - 1e-5 for g in out)
