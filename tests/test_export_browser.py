"""The exported HTML page in headless Debian chromium: items appear and meet the controls from the URL, the page's
log-probabilities equal `makemore score` (float32 weights: 1e-4; a labelled run's given a label, a blend or none),
a seed repeats, a labelled page samples given the label chosen, and nothing leaves the page."""

from __future__ import annotations

import numpy as np
import pytest
from browser import browser_page, chromium  # noqa: F401
from helpers import run_cli
from test_export import FAMILIES, LABELLED, LABELLED_MIXES, LONG, VARIANTS, items_of, labelled_run, tiny_run

import makemore


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("export-page-runs")


def open_page(new_page, path, query: str):
    page = new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri() + query)
    page.wait_for_selector("body[data-state=done]", timeout=30000)
    page.requests = requests
    return page


def shown(page) -> list[tuple[str, float]]:
    return [(e.query_selector(".text").inner_text(), float(e.get_attribute("data-logprob")))
            for e in page.query_selector_all(".item")]  # fmt: skip


def export_page(run, out, capsys, *flags) -> None:
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "html", "--out", out, *flags)
    assert code == 0 and "wrote html export" in stdout


@pytest.mark.parametrize("name", FAMILIES + list(VARIANTS))
def test_page_scores_as_the_package(name, runs, tmp_path, browser_page, capsys):  # noqa: F811
    run = tiny_run(runs, name)
    export_page(run, tmp_path / "page.html", capsys)
    page = open_page(browser_page, tmp_path / "page.html", "?n=3&seed=1")
    assert len(shown(page)) == 3
    items = items_of(run)
    got = page.evaluate("(items) => window.makemore.score(items)", items)
    want = [r["logprob"] for r in makemore.load(run).score(items)]
    assert np.allclose(got, want, rtol=0, atol=1e-4)  # float32 weights: the page computes what makemore computes


@pytest.mark.parametrize("name", ["mlp", "mix"])
def test_page_samples_what_the_url_asks(name, runs, tmp_path, browser_page, capsys):  # noqa: F811
    run = tiny_run(runs, name)
    out = tmp_path / "page.html"
    export_page(run, out, capsys)
    query = "?n=12&seed=1&prefix=el&suffix=a&max_len=9&temperature=0.8"
    page = open_page(browser_page, out, query)
    items = shown(page)
    assert len(items) == 12 and not page.is_visible("select[name=label]")  # no labels: no label selector
    assert all(text.startswith("el") and text.endswith("a") and len(text) <= 9 for text, _ in items)
    want = [r["logprob"] for r in makemore.load(run).score([text for text, _ in items])]
    assert np.allclose([lp for _, lp in items], want, rtol=0, atol=1e-4)  # the page's log-probs are the model's
    assert all(url.startswith("file:") for url in page.requests)  # no network: only the page itself

    again = open_page(browser_page, out, query)
    assert shown(again) == items  # the same seed gives the same items
    other = open_page(browser_page, out, query.replace("seed=1", "seed=2"))
    assert [t for t, _ in shown(other)] != [t for t, _ in items]


def test_page_controls_and_errors(runs, tmp_path, browser_page, capsys):  # noqa: F811
    run = tiny_run(runs, "wavenet")
    out = tmp_path / "page.html"
    export_page(run, out, capsys, "--precision", "float16")
    page = open_page(browser_page, out, "?n=30&seed=4&top_k=1&min_len=3")
    texts = [text for text, _ in shown(page)]
    assert len(texts) == 30 and len(set(texts)) == 1 and len(texts[0]) >= 3  # top-k 1: always the likeliest
    want = makemore.load(run).score([LONG])[0]["logprob"]
    assert abs(page.evaluate("(items) => window.makemore.score(items)", [LONG])[0] - want) < 0.05  # float16
    page.fill("input[name=prefix]", "q!")
    page.click("button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "characters the model does not know" in page.inner_text("#status")


@pytest.mark.parametrize("name", list(LABELLED) + [f"mix/{name}" for name in LABELLED_MIXES])
def test_labelled_page_scores_as_the_package(name, runs, tmp_path, browser_page, capsys):  # noqa: F811
    run = labelled_run(runs, name.removeprefix("mix/"))
    export_page(run, tmp_path / "page.html", capsys)
    page = open_page(browser_page, tmp_path / "page.html", "?n=3&seed=1&label=m")
    assert len(shown(page)) == 3
    items, package = items_of(run), makemore.load(run)
    for label in ("f", "m", "f=0.7,m=0.3", None):  # a label, a blend, none: p(item)
        got = page.evaluate("([items, label]) => window.makemore.score(items, label)", [items, label])
        want = [r["logprob"] for r in package.score(items, label=label)]
        assert np.allclose(got, want, rtol=0, atol=1e-4), label


def test_labelled_page_samples_given_the_label(runs, tmp_path, browser_page, capsys):  # noqa: F811
    run = labelled_run(runs, "gru-add")
    out = tmp_path / "page.html"
    export_page(run, out, capsys)
    package = makemore.load(run)

    def given(page, label) -> list[str]:
        items = shown(page)
        want = [r["logprob"] for r in package.score([text for text, _ in items], label=label)]
        assert np.allclose([lp for _, lp in items], want, rtol=0, atol=1e-4)  # drawn and scored under the label
        return [text for text, _ in items]

    page = open_page(browser_page, out, "?n=10&seed=3&label=f&prefix=a")
    options = page.eval_on_selector_all("select[name=label] option", "options => options.map((o) => o.value)")
    assert options == ["", "f", "m"] and page.input_value("select[name=label]") == "f"
    female = given(page, "f")
    assert len(female) == 10 and all(text.startswith("a") for text in female)
    assert given(open_page(browser_page, out, "?n=10&seed=3&label=f&prefix=a"), "f") == female  # a seed repeats
    assert given(open_page(browser_page, out, "?n=10&seed=3&label=m&prefix=a"), "m") != female
    blend = open_page(browser_page, out, "?n=10&seed=3&label=f=0.5,m=0.5")
    given(blend, "f=0.5,m=0.5")  # a blend from the URL
    page.select_option("select[name=label]", "")  # any label: p(item)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-state=done]")
    given(page, None)
    page.select_option("select[name=label]", "m")
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-state=done]")
    assert given(page, "m") == given(open_page(browser_page, out, "?n=10&seed=3&label=m&prefix=a"), "m")
