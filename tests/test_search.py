"""Search for the most probable items: best-first search is exact (= brute-force enumeration); beam approximates."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.generation import search
from makemore.generation.constraints import ConstraintSpec, build_constraint, length_constraint
from makemore.generation.scoring import score_items
from makemore.generation.search import SearchBudgetExceeded, beam_search, best_first_search
from makemore.models import MODELS, build_model
from makemore.models.ngram import NGramConfig

TINY_ITEMS = ["ab", "abc", "ba", "c", "aab", "bca", "cab", "a", "ab", "ca", "bb", "acb", "dab", "cd"]
TINY_SIZES = {"n_embd": 8, "n_hidden": 16, "n_layer": 2, "n_head": 2, "block_size": 6, "order": 3}


def count_bigram(items: list[str] = TINY_ITEMS) -> tuple[torch.nn.Module, Vocab]:
    """The count bigram (add-k), fitted in closed form on a tiny corpus over {a, b, c, d}."""
    vocab = Vocab.from_texts(items)
    model = build_model("ngram", NGramConfig(order=2, smoothing="add-k", k=0.5, tune_discounts=False), vocab.size)
    model.fit(LineSplit(items, vocab))
    return model.eval(), vocab


def tiny_model(name: str, vocab: Vocab) -> torch.nn.Module:
    """A small random (or fitted, for count models) instance of a registered model."""
    torch.manual_seed(0)
    config_class = MODELS[name].config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    sizes = dict(TINY_SIZES, tune_discounts=False) if "tune_discounts" in fields else TINY_SIZES
    model = build_model(name, config_class(**{k: v for k, v in sizes.items() if k in fields}), vocab.size)
    if not model.trainable:
        split = LineSplit(TINY_ITEMS, vocab)
        model.fit(split, split)
    return model.eval()


def all_strings(alphabet: str, max_len: int, min_len: int = 1) -> list[str]:
    return ["".join(c) for n in range(min_len, max_len + 1) for c in itertools.product(alphabet, repeat=n)]


def brute_force(model, vocab: Vocab, candidates: list[str]) -> list[tuple[str, float]]:
    """Every candidate scored, most probable first."""
    scored = score_items(model, vocab, candidates)
    return sorted(((r["item"], r["logprob"]) for r in scored), key=lambda pair: -pair[1])


def assert_exact(found, ranked: list[tuple[str, float]], vocab: Vocab) -> None:
    """`found` are the len(found) most probable items: their log-probs are the top ones (ties may come in any
    order), each is the item's own log-prob, and no item comes twice."""
    logprobs = dict(ranked)
    texts = [vocab.decode(g.ids) for g in found]
    assert len(set(texts)) == len(texts)
    assert [g.model_logprob for g in found] == pytest.approx([lp for _, lp in ranked[: len(found)]], abs=1e-6)
    assert [g.model_logprob for g in found] == pytest.approx([logprobs[t] for t in texts], abs=1e-6)


def test_best_first_equals_brute_force_enumeration_on_a_bigram():
    model, vocab = count_bigram()
    ranked = brute_force(model, vocab, all_strings("abcd", 4))
    k = 12
    found = best_first_search(model, k, length_constraint(vocab.size, 4, min_len=1))
    assert len(found) == k
    assert_exact(found, ranked, vocab)
    assert [g.model_logprob for g in found] == sorted((g.model_logprob for g in found), reverse=True)
    # the reported details agree with the scorer's; the masked model (no empty item) gives each item more
    scored = {r["item"]: r for r in score_items(model, vocab, [vocab.decode(g.ids) for g in found])}
    for g in found:
        per_char = [lp for _, lp in scored[vocab.decode(g.ids)]["char_logprobs"]]
        assert g.token_logprobs == pytest.approx(per_char, abs=1e-9)
        assert g.logprob > g.model_logprob


def test_k_results_are_a_prefix_of_k_plus_2_results():
    model, vocab = count_bigram()
    constraint = length_constraint(vocab.size, 4, min_len=1)
    for k in (1, 3, 7):
        short = best_first_search(model, k, constraint)
        longer = best_first_search(model, k + 2, constraint)
        assert [g.ids for g in short] == [g.ids for g in longer[:k]]


def test_best_first_respects_prefix_suffix_regex_and_lengths():
    model, vocab = count_bigram()
    spec = ConstraintSpec(max_len=5, prefix="a", suffix="b", regex="[abc]*", min_len=3)
    matching = [s for s in all_strings("abcd", 5, 3) if s.startswith("a") and s.endswith("b") and "d" not in s]
    ranked = brute_force(model, vocab, matching)
    found = best_first_search(model, 8, build_constraint(spec, vocab))
    assert_exact(found, ranked, vocab)
    constraint = build_constraint(spec, vocab)
    assert all(constraint.accepts(g.ids) for g in found)
    assert all(g.logprob >= g.model_logprob for g in found)  # renormalised over the allowed tokens


def test_fewer_items_when_fewer_exist_and_accept_filters():
    model, vocab = count_bigram()
    found = best_first_search(model, 5, build_constraint(ConstraintSpec(max_len=4, regex="a|cd"), vocab))
    assert sorted(vocab.decode(g.ids) for g in found) == ["a", "cd"]
    ranked = brute_force(model, vocab, all_strings("abcd", 4))
    long_enough = [(t, lp) for t, lp in ranked if len(t) >= 3]
    found = best_first_search(model, 6, length_constraint(vocab.size, 4, min_len=1), accept=lambda ids: len(ids) >= 3)
    assert_exact(found, long_enough, vocab)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_best_first_is_exact_for_every_model_with_and_without_cached_states(name, monkeypatch):
    """Prefixes are expanded from cached states (reorder_state + step) or replayed from the start; both are exact.
    A tiny state cache and batch force replays, evictions and many batches."""
    vocab = Vocab(list("abcd"))
    model = tiny_model(name, vocab)
    spec = ConstraintSpec(max_len=5, regex="[a-c]*d?b", min_len=2, prefix="a")
    pattern = re.compile(spec.regex)
    matching = [s for s in all_strings("abcd", 5, 2) if s.startswith("a") and pattern.fullmatch(s)]
    ranked = brute_force(model, vocab, matching)
    found = best_first_search(model, 15, build_constraint(spec, vocab))
    assert_exact(found, ranked, vocab)
    monkeypatch.setattr(search, "CACHE_ROWS", 2)
    monkeypatch.setattr(search, "EXPAND_BATCH", 3)
    again = best_first_search(model, 15, build_constraint(spec, vocab))
    assert_exact(again, ranked, vocab)


@pytest.mark.parametrize("cache_rows, batch", [(2, 3), (8, 16), (40, 16)])
def test_many_items_through_a_small_state_cache(cache_rows, batch, monkeypatch):
    """Batches whose parents' states sit in several cached batches, some evicted while the batch is expanded."""
    model, vocab = count_bigram()
    ranked = brute_force(model, vocab, all_strings("abcd", 5))
    monkeypatch.setattr(search, "CACHE_ROWS", cache_rows)
    monkeypatch.setattr(search, "EXPAND_BATCH", batch)
    found = best_first_search(model, 300, length_constraint(vocab.size, 5, min_len=1))
    assert_exact(found, ranked, vocab)


def test_budget_is_a_one_line_error_that_says_what_to_do():
    model, vocab = count_bigram()
    with pytest.raises(SearchBudgetExceeded) as info:
        best_first_search(model, 50, length_constraint(vocab.size, 8, min_len=1), max_expansions=10)
    message = str(info.value)
    assert isinstance(info.value, MakemoreError) and "\n" not in message
    assert "--max-expansions" in message and "narrow" in message and "of 50 items" in message


def test_beam_search_is_an_approximation_that_best_first_never_loses_to():
    """The i-th item of best-first search is at least as probable as the i-th of any beam; a narrow beam can
    miss items (the reason beam search is not the default answer to "the K most probable items")."""
    vocab = Vocab(list("abcd"))
    missed = 0
    for name in ("mlp", "rnn"):
        model = tiny_model(name, vocab)
        constraint = length_constraint(vocab.size, 5, min_len=1)
        best = best_first_search(model, 6, constraint)
        beam = beam_search(model, 6, constraint, width=2)
        for exact, approximate in zip(best, beam):
            assert exact.model_logprob >= approximate.model_logprob - 1e-9
        missed += sum(a.model_logprob < e.model_logprob - 1e-9 for e, a in zip(best, beam))
    assert missed > 0
