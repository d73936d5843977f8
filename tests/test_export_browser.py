"""The exported HTML page in headless Debian chromium: items appear and meet the controls from the URL, the page's
log-probabilities equal `makemore score` (float32 weights: 1e-4), a seed repeats, and nothing leaves the page."""

from __future__ import annotations

import numpy as np
import pytest
from browser import browser_page, chromium  # noqa: F401
from helpers import run_cli
from test_export import FAMILIES, LONG, VARIANTS, items_of, tiny_run

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
    assert len(items) == 12
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
