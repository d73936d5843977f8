"""Constraints are exact: every output satisfies them, and they fail only when no item could satisfy them.

Checks use Python's `re` and brute-force enumeration over a tiny alphabet, never the automaton under test.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.generation.constraints import ConstraintSpec, Unsatisfiable, build_constraint
from makemore.generation.sample import DecodeOptions, decode, decode_smc
from makemore.generation.scoring import score_items
from makemore.generation.search import beam_search
from makemore.models import MODELS, build_model
from makemore.models.ngram import NGramConfig

ITEMS = ["ab", "abc", "ba", "c", "aab", "bca", "cab", "a", "ca", "bb", "acb", "cc"]
VOCAB = Vocab.from_texts(ITEMS)  # a b c


@pytest.fixture(scope="module")
def model():
    m = build_model("ngram", NGramConfig(order=2, smoothing="add-k", k=0.5, tune_discounts=False), VOCAB.size)
    m.fit(LineSplit(ITEMS, VOCAB))
    return m.eval()


def satisfies(item: str, spec: ConstraintSpec) -> bool:
    """The constraint, checked independently of the automaton."""
    return (
        spec.min_len <= len(item) <= spec.max_len
        and item.startswith(spec.prefix)
        and item.endswith(spec.suffix)
        and all(text in item for text in spec.contains)
        and (spec.regex is None or re.fullmatch(spec.regex, item) is not None)
        and (spec.charset is None or set(item) <= set(spec.charset))
    )


def strings(max_len: int, alphabet: str = "abc") -> list[str]:
    return ["".join(p) for n in range(max_len + 1) for p in itertools.product(alphabet, repeat=n)]


def sample_texts(model, spec: ConstraintSpec, n: int = 300, seed: int = 0, **options) -> list[str]:
    constraint = build_constraint(spec, VOCAB)
    outputs = decode(model, n, constraint, DecodeOptions(**options), torch.Generator().manual_seed(seed))
    return [VOCAB.decode(g.ids) for g in outputs]


SPECS = {
    "prefix": ConstraintSpec(max_len=8, prefix="ca"),
    "suffix": ConstraintSpec(max_len=8, suffix="bc"),
    "contains": ConstraintSpec(max_len=8, contains=("aa", "cb")),
    "regex": ConstraintSpec(max_len=8, regex="(ab|c)+a?"),
    "anchored regex": ConstraintSpec(max_len=8, regex="^b.*c$"),
    "charset": ConstraintSpec(max_len=8, charset="ac"),
    "lengths": ConstraintSpec(max_len=4, min_len=3),
    "all together": ConstraintSpec(max_len=7, min_len=4, prefix="a", suffix="b", contains=("cc",), charset="abc"),
    "regex with charset": ConstraintSpec(max_len=6, regex="[abc]*b[abc]*", charset="bc", min_len=2),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("options", [{}, {"temperature": 2.0}, {"top_k": 2}, {"greedy": True}])
def test_every_output_satisfies_every_constraint(model, name, options):
    spec = SPECS[name]
    texts = sample_texts(model, spec, **options)
    assert all(satisfies(t, spec) for t in texts), [t for t in texts if not satisfies(t, spec)][:5]


def test_beam_outputs_satisfy_constraints(model):
    for spec in SPECS.values():
        found = beam_search(model, 5, build_constraint(spec, VOCAB), width=20)
        assert found and all(satisfies(VOCAB.decode(g.ids), spec) for g in found)


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.text("abc", max_size=2),
    suffix=st.text("abc", max_size=2),
    contains=st.lists(st.text("abc", min_size=1, max_size=2), max_size=1),
    regex=st.sampled_from([None, "a*b*c*", "(ab)*", "[^a]*a[^a]*", "c(a|b)c?", "b{2,3}.*", ""]),
    charset=st.sampled_from([None, "ab", "bc", "c"]),
    min_len=st.integers(0, 4),
    extra=st.integers(0, 3),
)
def test_constraints_fail_exactly_when_nothing_can_satisfy_them(
    model, prefix, suffix, contains, regex, charset, min_len, extra
):
    spec = ConstraintSpec(
        max_len=max(1, min_len + extra),
        prefix=prefix,
        suffix=suffix,
        contains=tuple(contains),
        regex=regex,
        charset=charset,
        min_len=min_len,
    )
    possible = [s for s in strings(spec.max_len) if satisfies(s, spec)]
    if not possible:
        with pytest.raises(Unsatisfiable):
            build_constraint(spec, VOCAB)
        return
    texts = sample_texts(model, spec, n=60)
    assert set(texts) <= set(possible)
    # and a wide beam finds exactly the most probable satisfying items
    k = min(3, len(possible))
    found = beam_search(model, k, build_constraint(spec, VOCAB), width=200)
    best = sorted((r["logprob"] for r in score_items(model, VOCAB, possible)), reverse=True)[:k]
    assert [g.model_logprob for g in found] == pytest.approx(best, abs=1e-9)


def test_suffix_and_contains_escape_regex_characters():
    vocab = Vocab(list("ab.*()"))
    m = build_model("bigram", MODELS["bigram"].config_class(), vocab.size).eval()
    spec = ConstraintSpec(max_len=10, suffix=".*", contains=("(a)",))
    outputs = decode(m, 100, build_constraint(spec, vocab), DecodeOptions(), torch.Generator().manual_seed(0))
    for g in outputs:
        text = vocab.decode(g.ids)
        assert text.endswith(".*") and "(a)" in text


@pytest.mark.parametrize(
    "spec, named",
    [
        (ConstraintSpec(max_len=5, prefix="aQ"), "'Q'"),
        (ConstraintSpec(max_len=5, suffix="é"), "'é'"),
        (ConstraintSpec(max_len=5, contains=("xy",)), "'x' 'y'"),
        (ConstraintSpec(max_len=5, charset="abZ"), "'Z'"),
        (ConstraintSpec(max_len=5, regex="a(Z|W)b"), "'W' 'Z'"),
        (ConstraintSpec(max_len=5, regex="[XY]+"), "'X' 'Y'"),
    ],
)
def test_characters_outside_the_vocabulary_are_named_in_one_line(spec, named):
    with pytest.raises(MakemoreError) as error:
        build_constraint(spec, VOCAB)
    message = str(error.value)
    assert named in message and "\n" not in message and not isinstance(error.value, Unsatisfiable)


def test_classes_that_include_missing_characters_are_fine():
    # [a-z] mentions characters the vocabulary lacks but also ones it has: not an error, they just never match
    build_constraint(ConstraintSpec(max_len=5, regex="[a-z]+"), VOCAB)
    build_constraint(ConstraintSpec(max_len=5, regex="(?i)AB"), VOCAB)  # case-insensitive: 'A' matches 'a'


@pytest.mark.parametrize("regex", ["a(", r"(a)\1", "a{3,1}"])
def test_bad_or_unsupported_regex_is_a_one_line_error(regex):
    with pytest.raises(MakemoreError) as error:
        build_constraint(ConstraintSpec(max_len=5, regex=regex), VOCAB)
    assert "--regex" in str(error.value) and "\n" not in str(error.value)


def test_unsatisfiable_constraints_say_why():
    with pytest.raises(Unsatisfiable, match="lengths 2.*3..8"):
        build_constraint(ConstraintSpec(max_len=8, min_len=3, regex="ab"), VOCAB)
    with pytest.raises(Unsatisfiable, match="no item"):
        build_constraint(ConstraintSpec(max_len=8, regex="a+", charset="bc"), VOCAB)
    with pytest.raises(Unsatisfiable, match="longer than --max-len"):
        build_constraint(ConstraintSpec(max_len=2, prefix="abc"), VOCAB)
    with pytest.raises(MakemoreError, match="--min-len"):
        build_constraint(ConstraintSpec(max_len=2, min_len=3), VOCAB)


def test_masking_renormalises_and_reports_both_logprobs(model):
    spec = ConstraintSpec(max_len=8, suffix="b")
    outputs = decode(model, 50, build_constraint(spec, VOCAB), DecodeOptions(), torch.Generator().manual_seed(1))
    for g in outputs:
        assert g.logprob >= g.model_logprob  # conditioning on the constraint only raises each allowed probability
    unconstrained = decode(
        model,
        50,
        build_constraint(ConstraintSpec(max_len=30), VOCAB),
        DecodeOptions(),
        torch.Generator().manual_seed(1),
    )
    for g in unconstrained:
        if len(g.ids) < 30:  # nothing was masked
            assert g.logprob == pytest.approx(g.model_logprob, abs=1e-5)


def test_sequential_monte_carlo_approaches_the_exact_conditional(model):
    """Masking samples the per-step renormalised model, which is far from p(x | constraint); particles fix that.
    The count bigram gives p(x | constraint) exactly, by enumeration."""
    spec = ConstraintSpec(max_len=4, suffix="cb")
    possible = [s for s in strings(4) if satisfies(s, spec)]
    exact = {r["item"]: math.exp(r["logprob"]) for r in score_items(model, VOCAB, possible)}
    total = sum(exact.values())
    exact = {item: p / total for item, p in exact.items()}
    constraint = build_constraint(spec, VOCAB)

    def distance_to_exact(particles: int) -> float:
        generator = torch.Generator().manual_seed(0)
        batch = decode_smc(model, 1000, particles, constraint, 1.0, generator)
        texts = [VOCAB.decode(g.ids) for g in batch]
        assert all(satisfies(t, spec) for t in texts)
        counts = Counter(texts)
        return 0.5 * sum(abs(counts[item] / len(batch) - p) for item, p in exact.items())  # total variation

    masked, particles = distance_to_exact(1), distance_to_exact(30)  # measured: about 0.65 and 0.09
    assert masked > 0.5 and particles < 0.2
