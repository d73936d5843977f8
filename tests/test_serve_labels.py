"""`makemore serve` and labelled runs: the JSON API's label (sample given a label or a blend, errors worded as the
CLI's), p(label | item) in scores and POST /api/classify, labelled uploads, and `auto` in the model list (which
refuses labelled data before the job is queued). Unlabelled runs answer as they always did."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from conftest import NAMES  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from helpers import run_cli  # noqa: E402

import makemore  # noqa: E402
from makemore.serve import create_app, training  # noqa: E402
from makemore.serve.runs import RunTable  # noqa: E402
from makemore.serve.schemas import TrainRequest  # noqa: E402
from makemore.serve.tasks import plain  # noqa: E402

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}
LABELLED = "".join(f"{'ends-a' if name.endswith('a') else 'other'}\t{name}\n" for name in NAMES * 3)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A labelled tiny transformer ("lab": labels ends-a, other) and an unlabelled one ("tf")."""
    root = tmp_path_factory.mktemp("serve-labels")
    (root / "labelled.tsv").write_text(LABELLED, encoding="utf-8")
    (root / "names.txt").write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    runs = root / "runs"
    makemore.train(root / "labelled.tsv", model="transformer", out=runs / "lab", labelled=True, max_steps=30,
                   samples=0, **TINY)  # fmt: skip
    makemore.train(root / "names.txt", model="transformer", out=runs / "tf", max_steps=30, samples=0, **TINY)
    return runs


@pytest.fixture(scope="module")
def client(runs_dir):
    with TestClient(create_app([runs_dir], runs_dir=runs_dir)) as test_client:
        yield test_client


def post(client, path: str, **body):
    return client.post(path, json=body)


def test_runs_list_their_labels(client):
    rows = {row["name"]: row for row in client.get("/api/runs").json()}
    assert rows["lab"]["labels"] == ["ends-a", "other"] and rows["tf"]["labels"] == []


@pytest.mark.parametrize("label", ["ends-a", "ends-a=0.7,other=0.3", {"ends-a": 0.7, "other": 0.3}])
def test_sample_given_a_label_is_run_generate_under_it(client, runs_dir, label):
    response = post(client, "/api/sample", run="lab", n=8, seed=5, label=label)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    expected = makemore.load(runs_dir / "lab").generate(8, seed=5, label=label).items
    assert items == [plain(item) for item in expected] and len(items) == 8
    shown = label if isinstance(label, str) else "ends-a=0.7,other=0.3"
    assert {item["label"] for item in items} == {shown}
    client.app.state.pool.cache.clear()  # a shared link: the same list again, computed afresh
    assert post(client, "/api/sample", run="lab", n=8, seed=5, label=label).json()["items"] == items


def test_labels_change_the_items_and_unlabelled_requests_are_as_before(client, runs_dir):
    lists = [post(client, "/api/sample", run="lab", n=12, seed=2, **extra).json()["items"]
             for extra in ({}, {"label": "ends-a"}, {"label": "other"})]  # fmt: skip
    assert len({tuple(i["item"] for i in items) for items in lists}) == 3
    assert all("label" not in item for item in lists[0])  # no label: p(item) summed over the labels, as the CLI
    plain_run = makemore.load(runs_dir / "tf")
    items = post(client, "/api/sample", run="tf", n=6, seed=1).json()["items"]
    assert items == [plain(item) for item in plain_run.generate(6, seed=1).items]
    scored = post(client, "/api/score", run="tf", items=["emma"]).json()["items"][0]
    assert set(scored) == {"item", "logprob", "nll_per_token", "char_logprobs", "status"}


@pytest.mark.parametrize(
    "run, label, cli_args",
    [
        ("lab", "x", ["--label", "x"]),
        ("tf", "ends-a", ["--label", "ends-a"]),
        ("lab", "ends-a=-1", ["--label", "ends-a=-1"]),
    ],
)
def test_label_errors_read_as_the_cli_words_them(client, runs_dir, capsys, run, label, cli_args):
    response = post(client, "/api/sample", run=run, n=3, seed=1, label=label)
    code, _, err = run_cli(capsys, "sample", runs_dir / run, "-n", "3", *cli_args)
    assert code != 0 and response.status_code == 400
    assert err.strip() == "makemore: error: " + response.json()["error"]


def test_scores_of_a_labelled_run_carry_p_label_given_item(client, runs_dir):
    run = makemore.load(runs_dir / "lab")
    names = ["emma", "harper", "mia"]
    scored = post(client, "/api/score", run="lab", items=names).json()["items"]
    classified = run.classify(names)
    for row, truth in zip(scored, classified):
        assert row["label"] == truth["label"] and sum(row["probs"].values()) == pytest.approx(1, abs=1e-5)
        assert row["probs"] == pytest.approx(truth["probs"], abs=1e-6)
    assert [r["logprob"] for r in scored] == [plain(r)["logprob"] for r in run.score(names)]
    given = post(client, "/api/score", run="lab", items=names, label="other").json()["items"]
    assert [r["logprob"] for r in given] == [plain(r)["logprob"] for r in run.score(names, label="other")]
    response = post(client, "/api/classify", run="lab", items=names)
    assert response.json() == {"items": [plain(r) for r in classified]}


def test_classify_errors(client, runs_dir, capsys):
    response = post(client, "/api/classify", run="tf", items=["emma"])
    code, _, err = run_cli(capsys, "classify", runs_dir / "tf", "emma")
    assert response.status_code == 400 and err.strip() == "makemore: error: " + response.json()["error"]
    assert post(client, "/api/classify", run="lab", items=[]).json() == {"error": "nothing to classify: give items"}
    assert post(client, "/api/classify", run="lab", items=[""]).json() == {"error": "cannot classify an empty string"}
    assert post(client, "/api/classify", run="nope", items=["a"]).status_code == 404


def test_docs_describe_the_labels(client):
    page = client.get("/docs").text
    assert "/api/classify" in page and "female=0.7,male=0.3" in page and "labelled" in page


def finished(client, job_id: str) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("finished", "stopped", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError("the job did not finish")


def test_train_a_labelled_upload_then_sample_it_given_a_label(client):
    response = client.post(
        "/api/train",
        files={"file": ("by label.tsv", LABELLED.encode(), "text/tab-separated-values")},
        data={"model": "bigram", "labelled": "true", "settings": json.dumps({"max_steps": 5})},
    )
    assert response.status_code == 202, response.text
    job = finished(client, response.json()["id"])
    assert job["status"] == "finished" and job["run"] == "by-label-bigram"
    assert {r["name"]: r["labels"] for r in client.get("/api/runs").json()}["by-label-bigram"] == ["ends-a", "other"]
    items = post(client, "/api/sample", run="by-label-bigram", n=4, seed=1, label="other").json()["items"]
    assert len(items) == 4 and all(item["label"] == "other" for item in items)


@pytest.mark.parametrize(
    "upload, fields, message",
    [
        (b"emma\nava\n", {"labelled": "true"}, "x.tsv: line 1 has no tab; --labelled expects LABEL<TAB>ITEM lines"),
        (None, {"dataset": "first-names", "labelled": "true"}, "--labelled: first-names has no labels"),
        (None, {"model": "auto", "settings": '{"max_steps": 5}'}, "--max-steps: --model auto chooses the models"),
    ],
)
def test_labelled_and_auto_training_errors_come_before_the_queue(client, upload, fields, message):
    fields = {"model": "bigram", **fields}
    files = {"file": ("x.tsv", upload, "text/plain")} if upload is not None else None
    before = len(client.get("/api/jobs").json())
    if files:
        response = client.post("/api/train", files=files, data=fields)
    else:
        settings = json.loads(fields.pop("settings", "{}"))
        response = post(client, "/api/train", **{**fields, "labelled": fields.get("labelled") == "true"},
                        settings=settings)  # fmt: skip
    assert response.status_code == 400 and response.json()["error"].startswith(message)
    assert len(client.get("/api/jobs").json()) == before  # nothing queued


def test_auto_is_offered_and_takes_labelled_data(client, runs_dir, tmp_path):
    models = client.get("/api/models").json()
    assert models[0]["name"] == "auto" and models[0]["default"] and models[0]["trainable"]
    assert sum(m["default"] for m in models) == 1
    request = TrainRequest(model="auto", dataset="first-names-by-sex", settings={"time_budget": 30})
    kwargs, name, _ = training.prepare(RunTable([runs_dir]), request, None, set())
    assert kwargs["model"] == "auto" and kwargs["input"] == "first-names-by-sex" and name == "first-names-by-sex-auto"
    kwargs, name, _ = training.prepare(
        RunTable([runs_dir]),
        TrainRequest(model="auto", dataset="first-names", settings={"time_budget": 30}),
        None,
        set(),
    )
    assert kwargs["model"] == "auto" and kwargs["time_budget"] == 30 and name == "first-names-auto"
    datasets = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert datasets["first-names-by-sex"]["labelled"] and datasets["first-names-by-sex"]["labels"] == ["female", "male"]
    assert not datasets["first-names"]["labelled"]
