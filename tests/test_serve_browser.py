"""`makemore serve`'s page in a real headless browser (Debian's chromium through Playwright): generate with a prefix,
star, download, score, train with a live curve, stop, a shared link that reproduces a list, and a labelled run's
label selector (generate given a label or a blend, p(label | name) in scores, auto's refusal of labelled data).

MAKEMORE_SCREENSHOTS=DIR also saves a picture of each view at 1280x800 and 390x844 (docs/images holds them).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from browser import browser_page, chromium  # noqa: E402, F401  (fixtures)
from conftest import NAMES  # noqa: E402

import makemore  # noqa: E402
from makemore.serve import create_app  # noqa: E402

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}
VIEWS = ("generate", "score", "train", "inspect", "compare", "labels")
LABELLED = "".join(f"{'ends-a' if name.endswith('a') else 'other'}\t{name}\n" for name in NAMES * 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real uvicorn server on a free port (in a thread), serving two tiny runs; yields its address."""
    root = tmp_path_factory.mktemp("serve-browser")
    data = root / "names.txt"
    data.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    runs = root / "runs"
    makemore.train(data, model="transformer", out=runs / "tf", max_steps=40, eval_every=20, samples=0, **TINY)
    makemore.train(data, model="ngram", out=runs / "ng", order=3, samples=0)
    (root / "labelled.tsv").write_text(LABELLED, encoding="utf-8")
    makemore.train(root / "labelled.tsv", model="transformer", out=runs / "lab", labelled=True, max_steps=40,
                   samples=0, **TINY)  # fmt: skip
    port = free_port()
    config = uvicorn.Config(create_app([runs], runs_dir=runs), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def items_shown(page) -> list[str]:
    return page.locator("#gen-table tbody td.item").all_inner_texts()


def test_generate_star_download_and_share(server, browser_page, tmp_path):  # noqa: F811  (the fixture imported above)
    page = browser_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server + "/?view=generate")
    page.wait_for_selector("#gen-form select[name=run] option[value=tf]", state="attached")
    # usable (runs listed) this long after navigation began: the issue asks for 1 s; a shared CI machine gets slack
    assert page.evaluate("performance.now()") < 5000
    page.select_option("#gen-form select[name=run]", "tf")
    page.fill("#gen-form input[name=prefix]", "em")
    page.fill("#gen-form input[name=n]", "12")
    page.click("#gen-form button[type=submit]")
    page.wait_for_selector("#gen-table tbody tr")
    shown = items_shown(page)
    assert len(shown) == 12 and all(item.startswith("em") for item in shown)

    page.locator("#gen-table tbody button.star").first.click()
    assert page.locator("#fav-list li").first.inner_text().startswith(shown[0])

    with page.expect_download() as download:
        page.click("#gen-txt")
    saved = tmp_path / "list.txt"
    download.value.save_as(saved)
    assert saved.read_text(encoding="utf-8").split() == shown

    shared = page.url  # every setting, and the seed the server drew
    assert "prefix=em" in shared and "seed=" in shared
    other = browser_page(390, 844)
    other.goto(shared)
    other.wait_for_selector("#gen-table tbody tr")
    assert items_shown(other) == shown
    assert not errors


def test_score_a_name(server, browser_page):  # noqa: F811  (the fixture imported above)
    page = browser_page()
    page.goto(server + "/?view=score")
    page.wait_for_selector("#score-form select[name=run] option[value=tf]", state="attached")
    page.select_option("#score-form select[name=run]", "tf")
    page.fill("#score-form textarea", "emma\nzzz")
    page.check("#score-form input[name=sort]")
    page.click("#score-form button[type=submit]")
    page.wait_for_selector(".score-row")
    rows = page.locator(".score-row")
    assert rows.count() == 2
    assert rows.first.locator(".name").inner_text() == "1. emma"  # the likelier name first
    assert "log-prob -" in rows.first.inner_text()
    assert rows.first.locator(".strip span").count() == 5  # e m m a <end>


def test_train_watch_the_curve_then_stop(server, browser_page):  # noqa: F811  (the fixture imported above)
    page = browser_page()
    page.goto(server + "/?view=train")
    page.wait_for_selector("#model-select option[value=bigram]", state="attached")
    page.select_option("#model-select", "bigram")
    assert "bigram" in page.inner_text("#model-summary")
    page.fill("#train-form input[name=max_steps]", "200000")
    page.fill("#train-form input[name=name]", "live")
    page.click("#train-form button[type=submit]")
    page.wait_for_function("document.getElementById('job-title').textContent.includes('live')")
    page.wait_for_function("Train.points().train.length >= 2", timeout=30000)
    first = page.evaluate("Train.points().train.length")
    page.wait_for_function(f"Train.points().train.length > {first}", timeout=30000)  # the curve keeps growing
    page.click("#job-stop")
    page.wait_for_selector("#job-resume:not([hidden])", timeout=30000)
    assert "stopped" in page.inner_text("#job-title")
    stopped_at = len(page.evaluate("Train.points().train"))
    page.click("#job-resume")  # the same run goes on from its checkpoint, on the same curve
    page.wait_for_function(f"Train.points().train.length > {stopped_at}", timeout=30000)
    page.click("#job-stop")
    page.wait_for_selector("#job-resume:not([hidden])", timeout=30000)
    page.wait_for_function(
        "[...document.querySelectorAll('#gen-form select[name=run] option')].some(o => o.value === 'live')"
    )  # the stopped run can be sampled at once


def test_labels_generate_given_a_label_or_a_blend_share_and_score(server, browser_page):  # noqa: F811  (fixture)
    page = browser_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server + "/?view=generate")
    page.wait_for_selector("#gen-form select[name=run] option[value=lab]", state="attached")
    page.select_option("#gen-form select[name=run]", "tf")
    assert page.locator("#gen-labels").is_hidden()  # an unlabelled run: no label selector, no label sent
    with page.expect_request("**/api/sample") as request:
        page.click("#gen-form button[type=submit]")
    assert "label" not in request.value.post_data_json and "label" not in page.url
    page.select_option("#gen-form select[name=run]", "lab")
    page.wait_for_selector("#gen-labels:not([hidden])")
    assert page.locator("#gen-form select[name=label] option").all_inner_texts() == ["any label", "ends-a", "other"]
    page.select_option("#gen-form select[name=label]", "other")
    page.fill("#gen-form input[name=n]", "8")
    page.fill("#gen-form input[name=seed]", "3")
    with page.expect_request("**/api/sample") as request:
        page.click("#gen-form button[type=submit]")
    assert request.value.post_data_json["label"] == "other"
    page.wait_for_function("document.getElementById('gen-summary').textContent.includes('label other')")
    given = items_shown(page)
    assert len(given) == 8 and "label=other" in page.url
    api = page.request.post(server + "/api/sample", data={"run": "lab", "n": 8, "seed": 3, "label": "other"})
    assert [item["item"] for item in api.json()["items"]] == given

    page.select_option("#gen-form select[name=label2]", "ends-a")  # a blend: other 75%, ends-a 25%
    page.locator("#gen-form input[name=weight]").evaluate(
        "(e) => { e.value = 0.75; e.dispatchEvent(new Event('input')); }"
    )
    assert page.inner_text("#gen-weight") == "other 75% · ends-a 25%"
    with page.expect_request("**/api/sample") as request:
        page.click("#gen-form button[type=submit]")
    assert request.value.post_data_json["label"] == "other=0.75,ends-a=0.25"
    page.wait_for_function(
        "document.getElementById('gen-summary').textContent.includes('blend other 75% + ends-a 25%')"
    )
    blended = items_shown(page)
    assert "label2=ends-a" in page.url and "weight=0.75" in page.url
    body = {"run": "lab", "n": 8, "seed": 3, "label": "other=0.75,ends-a=0.25"}  # what the page asked for
    assert [item["item"] for item in page.request.post(server + "/api/sample", data=body).json()["items"]] == blended
    other = browser_page(390, 844)
    other.goto(page.url)  # the link reproduces the blended list
    other.wait_for_selector("#gen-table tbody tr")
    assert items_shown(other) == blended and other.input_value("#gen-form select[name=label2]") == "ends-a"

    page.goto(server + "/?view=score&run=lab&items=emma%0Aharper")
    page.wait_for_selector(".score-row .label-probs")
    rows = page.locator(".score-row")
    assert rows.count() == 2 and rows.first.locator(".label-prob").count() == 2
    shares = [float(t.split()[-1].rstrip("%")) for t in rows.first.locator(".label-prob").all_inner_texts()]
    assert abs(sum(shares) - 100) < 0.2 and "p(label | name)" in page.inner_text("#score-summary")
    assert not errors


@pytest.mark.skipif(not os.environ.get("MAKEMORE_SCREENSHOTS"), reason="set MAKEMORE_SCREENSHOTS=DIR to save them")
def test_screenshots(server, browser_page):  # noqa: F811  (the fixture imported above)
    """One picture per view and width. Point MAKEMORE_SCREENSHOT_SERVER at a server with real runs for docs."""
    out = Path(os.environ["MAKEMORE_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    base = os.environ.get("MAKEMORE_SCREENSHOT_SERVER", server)
    run = os.environ.get("MAKEMORE_SCREENSHOT_RUN", "tf")
    other = os.environ.get("MAKEMORE_SCREENSHOT_OTHER", "ng")
    labelled = os.environ.get("MAKEMORE_SCREENSHOT_LABELLED", "lab")
    label = os.environ.get("MAKEMORE_SCREENSHOT_LABEL", "label=ends-a")  # e.g. label=female&label2=male&weight=0.7
    urls = {
        "generate": f"?view=generate&run={run}&n=15&seed=7&prefix=ma",
        "score": f"?view=score&run={run}&items=emma%0Aolivia%0Amarcus%0Axqzt&sort=1",
        "train": "?view=train",
        "inspect": f"?view=inspect&run={run}",
        "compare": f"?view=compare&run_a={run}&run_b={other}&n=12&seed=1",
        "labels": f"?view=generate&run={labelled}&n=15&seed=7&{label}",
    }
    ready = {"generate": "#gen-table tbody tr", "score": ".score-row", "train": "#job-list li",
             "inspect": "#plots img", "compare": "#compare-b table", "labels": "#gen-table tbody tr"}  # fmt: skip
    for width, height in ((1280, 800), (390, 844)):
        for view in VIEWS:
            page = browser_page(width, height)
            page.goto(f"{base}/{urls[view]}")
            page.wait_for_selector(ready[view], timeout=60000)
            if view == "train":  # the curve of a run in progress, not an empty chart
                page.wait_for_selector("#model-select option[value=transformer]", state="attached")
                page.select_option("#model-select", "transformer")
                page.fill("#train-form input[name=max_steps]", "3000")
                page.fill("#train-form input[name=name]", f"names-screenshot-{width}")
                page.click("#train-form button[type=submit]")
                page.wait_for_function(
                    f"document.getElementById('job-title').textContent.includes('screenshot-{width}')"
                    " && Train.points().val.length >= 2",
                    timeout=180000,
                )
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / f"serve-{view}-{width}.png"))
            if view == "train":
                page.click("#job-stop")
                page.wait_for_selector("#job-resume:not([hidden])", timeout=60000)
