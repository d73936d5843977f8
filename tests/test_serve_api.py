"""`makemore serve`'s JSON API, in process (Starlette's TestClient): every endpoint, every limit, path traversal,
the token, training jobs (stop, resume, queue, shutdown) and the CLI command's own checks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from conftest import NAMES  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from helpers import run_cli  # noqa: E402

import makemore  # noqa: E402
from makemore.runs import checkpoint as ckpt  # noqa: E402
from makemore.serve import create_app  # noqa: E402
from makemore.serve import jobs as jobs_module  # noqa: E402

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2}  # a transformer that trains in a second


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A directory with a tiny transformer ("tf") and a count bigram ("ng") trained on the conftest names."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "names.txt"
    data.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    runs = root / "runs"
    makemore.train(data, model="transformer", out=runs / "tf", max_steps=30, eval_every=10, samples=0, **TINY)
    makemore.train(data, model="ngram", out=runs / "ng", order=2, samples=0)
    return runs


@pytest.fixture(scope="module")
def client(runs_dir):
    with TestClient(create_app([runs_dir], runs_dir=runs_dir)) as test_client:
        yield test_client


def sample(client, **body):
    return client.post("/api/sample", json={"run": "tf", "n": 10, "seed": 1, **body})


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def job_status(client, job_id: str) -> dict:
    return client.get(f"/api/jobs/{job_id}").json()


def finished(client, job_id: str) -> dict:
    return wait_for(lambda: (s := job_status(client, job_id))["status"] in ("finished", "stopped", "failed") and s)


# ------------------------------------------------------------------------------------------------ runs, sample
def test_runs_lists_the_runs_given(client, runs_dir):
    rows = {row["name"]: row for row in client.get("/api/runs").json()}
    assert set(rows) >= {"tf", "ng"}
    assert rows["tf"]["model"] == "transformer" and rows["ng"]["model"] == "ngram"
    expected = makemore.describe_run(runs_dir / "tf")["best_val_loss"]
    assert rows["tf"]["val_nll"] == pytest.approx(expected)


def test_sample_is_run_generate_and_repeats_under_a_seed(client, runs_dir):
    response = sample(client, prefix="e", n=8, seed=3, temperature=0.9)
    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 8 and all(i["item"].startswith("e") for i in items)
    assert {"item", "logprob", "status", "nearest", "distance", "char_logprobs"} <= set(items[0])
    direct = makemore.load(runs_dir / "tf").generate(8, prefix="e", seed=3, temperature=0.9).items
    assert [i["item"] for i in items] == [d["item"] for d in direct]
    assert [i["logprob"] for i in items] == pytest.approx([d["logprob"] for d in direct], abs=1e-5)
    assert sample(client, prefix="e", n=8, seed=3, temperature=0.9).json()["items"] == items


def test_sample_without_a_seed_returns_the_one_it_used(client):
    first = sample(client, seed=None).json()
    assert isinstance(first["seed"], int)
    again = sample(client, seed=first["seed"]).json()
    assert [i["item"] for i in again["items"]] == [i["item"] for i in first["items"]]


def test_sample_filters_and_constraints(client):
    body = {"suffix": "a", "only_new": True, "unique": True, "n": 5, "max_len": 8, "min_len": 3}
    items = sample(client, **body).json()["items"]
    assert items and all(i["item"].endswith("a") and i["status"] == "new" and 3 <= len(i["item"]) <= 8 for i in items)
    assert len({i["item"] for i in items}) == len(items)
    regex = sample(client, regex="[aeiou][a-z]*", n=5).json()["items"]
    assert all(i["item"][0] in "aeiou" for i in regex)
    best = sample(client, best=3, seed=None).json()["items"]
    assert len(best) == 3 and best[0]["logprob"] >= best[1]["logprob"] >= best[2]["logprob"]


def test_same_request_same_items_under_concurrency(client, monkeypatch):
    monkeypatch.setattr(client.app.state.pool, "cache_size", 0)  # every request sampled, none answered from memory
    requests = [{"seed": seed, "n": 12, "prefix": prefix} for seed in (11, 12) for prefix in ("", "a")]
    expected = [[i["item"] for i in sample(client, **body).json()["items"]] for body in requests]
    got: dict[int, list[str]] = {}

    def ask(k: int) -> None:
        got[k] = [i["item"] for i in sample(client, **requests[k % 4]).json()["items"]]

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and all(got[k] == expected[k % 4] for k in range(8))
    assert len({tuple(items) for items in expected}) == 4  # (four different lists: the comparison means something)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"n": 10_001}, 400, "n must be <= 10,000, got 10001"),
        ({"n": 0}, 400, "n must be >= 1, got 0"),
        ({"regex": "a" * 201}, 400, "regex is 201 characters long; the limit is 200"),
        ({"prefix": "x" * 300}, 400, "prefix is 300 characters long; the limit is 200"),
        ({"temperature": -1}, 400, "temperature must be > 0 and finite, got -1.0"),
        ({"top_p": 2}, 400, "top_p must be in (0, 1], got 2.0"),
        ({"best": 20_000}, 400, "best must be <= 10,000, got 20000"),
        ({"n": "ten"}, 422, "n: Input should be a valid integer, unable to parse string as an integer"),
        ({"colour": "red"}, 422, "unknown field 'colour'"),
    ],
)
def test_sample_limits_are_one_line_4xx(client, body, status, message):
    response = sample(client, **body)
    assert response.status_code == status
    assert response.json() == {"error": message}


def test_malformed_bodies_are_one_line_4xx(client):
    for content in (b"{", b"[1, 2]", b"null"):
        response = client.post("/api/sample", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and set(response.json()) == {"error"}
        assert "\n" not in response.json()["error"]
    assert client.post("/api/sample", json={"n": 3}).json() == {"error": "run: required"}


@pytest.mark.parametrize("name", ["../tf", "/etc/passwd", "..", "tf/../tf", "runs/tf", "%2e%2e", "TF", ""])
def test_runs_outside_the_table_are_404(client, runs_dir, name):
    response = sample(client, run=name if name else str(runs_dir / "tf"))
    assert response.status_code == 404 and response.json()["error"].startswith("unknown run")
    assert client.post("/api/score", json={"run": name or str(runs_dir / "tf"), "items": ["emma"]}).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/..%2Fserve",
        "/api/runs/%2E%2E",
        "/api/runs/..%2F..%2Fetc/plots/loss.png",
        "/static/..%2Fapp.py",
        "/static/%2E%2E/%2E%2E/errors.py",
    ],
)
def test_traversal_in_urls_is_404(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "error" in response.json()


# ------------------------------------------------------------------------------------------------------- score
def test_score_is_run_score(client, runs_dir):
    response = client.post("/api/score", json={"run": "tf", "items": ["emma", "zzz"]})
    assert response.status_code == 200
    items = response.json()["items"]
    direct = makemore.load(runs_dir / "tf").score(["emma", "zzz"])
    assert [i["item"] for i in items] == ["emma", "zzz"]
    assert [i["logprob"] for i in items] == pytest.approx([d["logprob"] for d in direct], abs=1e-5)
    assert [c for c, _ in items[0]["char_logprobs"]] == ["e", "m", "m", "a", "<end>"]
    assert sum(lp for _, lp in items[0]["char_logprobs"]) == pytest.approx(items[0]["logprob"], abs=1e-3)
    assert items[0]["status"] == "in-train"
    ranked = client.post("/api/score", json={"run": "tf", "items": ["zzz", "emma"], "sort": True}).json()["items"]
    assert [i["item"] for i in ranked] == ["emma", "zzz"]


@pytest.mark.parametrize(
    "items, message",
    [
        (["emma", "e1"], "item 2: item 'e1' has characters not in the model's vocabulary: '1'"),
        (["emma", ""], "cannot score an empty string"),
        ([], "nothing to score: give items"),
        (["a"] * 10_001, "at most 10,000 items per request, got 10,001"),
    ],
)
def test_score_errors(client, items, message):
    response = client.post("/api/score", json={"run": "tf", "items": items})
    assert response.status_code == 400 and response.json() == {"error": message}


# ------------------------------------------------------------------------------------------- inspect, registry
def test_info_and_plots(client, runs_dir):
    info = client.get("/api/runs/tf").json()
    assert info["model"] == "transformer" and info["run"] == "tf" and str(runs_dir) not in json.dumps(info)
    for kind in ("loss", "bigram", "embeddings", "attention"):
        response = client.get(f"/api/runs/tf/plots/{kind}.png")
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG"), kind
    no_attention = client.get("/api/runs/ng/plots/attention.png")
    assert no_attention.status_code == 400 and "has no attention maps" in no_attention.json()["error"]
    assert client.get("/api/runs/tf/plots/attention.png?text=e1").status_code == 400
    assert client.get("/api/runs/tf/plots/nope.png").status_code == 404


def test_models_and_datasets(client):
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["transformer"]["summary"] == makemore.models.MODELS["transformer"].summary
    assert models["mix"]["trainable"] is False and models["mlp"]["trainable"] is True
    datasets = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert datasets["first-names"]["items"] > 1000 and datasets["first-names"]["default"]


def test_docs_and_page_are_served_without_a_cdn(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/api/sample" in docs.text and "cdn" not in docs.text.lower()
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    total = len(page.content)
    for asset in ("app.js", "panels.js", "train.js", "style.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text  # nothing fetched from elsewhere
        total += len(response.content)
    assert total <= 500_000
    assert client.get("/api/nothing").json() == {"error": "Not Found"}


# ---------------------------------------------------------------------------------------------------- training
def test_train_a_builtin_then_sample_it(client, runs_dir):
    settings = {"max_steps": 12, "log_every": 4, "eval_every": 6, **TINY}
    response = client.post("/api/train", json={"dataset": "first-names", "model": "transformer", "name": "fresh",
                                               "settings": settings})  # fmt: skip
    assert response.status_code == 202
    job = response.json()
    assert job["run"] == "fresh" and job["status"] in ("queued", "running")
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        messages = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    kinds = [m["event"] for m in messages if "event" in m]  # (the others are "job" snapshots: status, ETA)
    assert "train" in kinds and "eval" in kinds and kinds[-1] == "end"
    done = finished(client, job["id"])
    assert done["status"] == "finished" and done["step"] == 12 and done["result"]["val_nll"] > 0
    assert "fresh" in [r["name"] for r in client.get("/api/runs").json()]
    assert (runs_dir / "fresh" / ckpt.RUN_FILE).is_file()
    assert sample(client, run="fresh", n=3).status_code == 200
    again = client.post("/api/train", json={"model": "transformer", "name": "fresh", "settings": settings})
    assert again.status_code == 409 and "exists already" in again.json()["error"]


def test_train_an_upload(client, runs_dir):
    text = "\n".join(NAMES * 2) + "\n"
    settings = json.dumps({"max_steps": 5, **TINY})
    response = client.post(
        "/api/train",
        files={"file": ("my names.txt", text.encode(), "text/plain")},
        data={"model": "transformer", "settings": settings},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["run"] == "my-names-transformer"
    assert finished(client, job["id"])["status"] == "finished"
    info = client.get("/api/runs/my-names-transformer").json()
    assert info["data"]["sizes"]["train"] + info["data"]["sizes"]["val"] + info["data"]["sizes"]["test"] == 60


@pytest.mark.parametrize(
    "content, message",
    [
        (b"emma\n\xff\xfe\n", "bad.txt: not valid UTF-8 (line 2, byte offset 5)"),
        (b"emma\x00\n", "bad.txt: looks binary (contains NUL bytes), expected UTF-8 text"),
        (b"emma\n" + b"x" * 300 + b"\n", "bad.txt: line 2 is 300 characters long, over --max-item-len 256"),
    ],
)
def test_uploads_are_checked_as_the_cli_checks_files(client, content, message):
    response = client.post(
        "/api/train", files={"file": ("bad.txt", content, "text/plain")}, data={"model": "bigram", "mode": "line"}
    )
    assert response.status_code == 400 and response.json() == {"error": message}


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": "nope"}, 400, "unknown model 'nope'; choose from"),
        ({"model": "mix"}, 400, "--model mix is not trained but made from runs"),
        ({"dataset": "nope"}, 400, "unknown dataset 'nope'"),
        ({"settings": {"nope": 1}}, 400, "unknown setting --nope"),
        ({"settings": {"lr": -1}}, 400, "--lr must be > 0, got -1"),
        ({"name": "../escape"}, 400, "run name '../escape': use letters"),
        ({"name": "tf"}, 409, "run 'tf' exists already"),
        ({"resume": "../tf"}, 404, "unknown run '../tf'"),
        ({"resume": "tf", "dataset": "first-names"}, 400, "dataset: for a fresh run"),
        ({"steps": 3}, 400, "unknown field 'steps'"),
    ],
)
def test_train_errors(client, body, status, message):
    response = client.post("/api/train", json=body)
    assert response.status_code == status and response.json()["error"].startswith(message), response.json()


def test_stop_resume_and_queue(client, runs_dir, monkeypatch):
    long = {"max_steps": 100_000, "log_every": 1, "eval_every": 1000, **TINY}
    first = client.post("/api/train", json={"dataset": "first-names", "model": "transformer", "name": "long",
                                            "settings": long}).json()  # fmt: skip
    second = client.post("/api/train", json={"dataset": "first-names", "model": "bigram", "name": "waiting"}).json()
    assert second["status"] == "queued" and second["queue_position"] >= 1  # one job at a time
    monkeypatch.setattr(jobs_module, "MAX_QUEUED", 1)
    full = client.post("/api/train", json={"dataset": "first-names", "model": "bigram", "name": "third"})
    assert full.status_code == 429 and full.json()["error"].startswith("1 training jobs are waiting already")
    assert [j["id"] for j in client.get("/api/jobs").json()][:2] == [second["id"], first["id"]]
    wait_for(lambda: job_status(client, first["id"])["step"] >= 3)
    assert job_status(client, second["id"])["status"] == "queued"
    assert client.post(f"/api/jobs/{second['id']}/stop").json()["status"] == "cancelled"
    client.post(f"/api/jobs/{first['id']}/stop")
    stopped = finished(client, first["id"])
    assert stopped["status"] == "stopped" and 3 <= stopped["step"] < 100_000
    assert (runs_dir / "long" / ckpt.CHECKPOINT_FILE).is_file()
    resumed = client.post("/api/train", json={"resume": "long", "settings": {"max_steps": stopped["step"] + 4}})
    assert resumed.status_code == 202
    done = finished(client, resumed.json()["id"])
    assert done["status"] == "finished" and done["step"] == stopped["step"] + 4
    assert client.get("/api/jobs/999").status_code == 404
    assert client.post("/api/jobs/999/stop").status_code == 404


def test_server_stopped_mid_training_leaves_a_resumable_run(runs_dir, tmp_path):
    long = {"max_steps": 100_000, "log_every": 1, "eval_every": 1000, **TINY}
    with TestClient(create_app([tmp_path], runs_dir=tmp_path)) as own:
        job = own.post("/api/train", json={"dataset": "first-names", "model": "transformer", "name": "cut",
                                           "settings": long}).json()  # fmt: skip
        wait_for(lambda: job_status(own, job["id"])["step"] >= 2)
    # leaving the block shut the server down: the job saved a checkpoint, as a first Ctrl-C does in the CLI
    assert (tmp_path / "cut" / ckpt.CHECKPOINT_FILE).is_file()
    saved = makemore.describe_run(tmp_path / "cut")["steps"]
    assert saved >= 2
    result = makemore.train(resume=tmp_path / "cut", max_steps=saved + 3, samples=0)
    assert result["stopped"] == "max_steps" and result["step"] == saved + 3


# ------------------------------------------------------------------------------------------------ limits, token
def test_upload_size_limit(runs_dir, tmp_path):
    with TestClient(create_app([runs_dir], runs_dir=tmp_path, max_upload=1000)) as own:
        response = own.post("/api/train", files={"file": ("big.txt", b"emma\n" * 1000, "text/plain")})
        assert response.status_code == 413
        assert response.json()["error"] == "the upload is over the 1,000 bytes limit"


def test_time_limit(runs_dir):
    with TestClient(create_app([runs_dir], time_limit=0.05)) as own:
        response = own.post("/api/sample", json={"run": "tf", "n": 10_000, "seed": 1})
        assert response.status_code == 408
        assert response.json()["error"].startswith("the request took longer than the server's 0.05 s limit")


def test_token(runs_dir):
    with TestClient(create_app([runs_dir], token="s3cret")) as own:
        for path in ("/api/runs", "/", "/docs", "/static/app.js", "/openapi.json"):
            response = own.get(path)
            assert response.status_code == 401 and "token" in response.json()["error"], path
        assert own.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert own.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert own.get("/api/runs", headers={"X-Makemore-Token": "s3cret"}).status_code == 200
        assert own.post("/api/sample?token=s3cret", json={"run": "tf", "n": 2, "seed": 1}).status_code == 200
        page = own.get("/?token=s3cret")  # the page sets a cookie that its scripts and event streams carry
        assert page.status_code == 200 and own.get("/static/app.js").status_code == 200
        own.cookies.clear()
        assert own.get("/static/app.js").status_code == 401


def test_host_check(runs_dir):
    with TestClient(create_app([runs_dir], allowed_hosts=["127.0.0.1", "localhost"])) as own:
        assert own.get("/api/runs", headers={"Host": "evil.example:8000"}).status_code == 403
        assert own.get("/api/runs", headers={"Host": "127.0.0.1:8000"}).status_code == 200


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_serve_prints_its_address_and_a_token_off_loopback(capsys, monkeypatch, runs_dir):
    from makemore.cli import serve as serve_cli

    calls = []
    monkeypatch.setattr(serve_cli, "run_server", lambda app, host, port: calls.append((app, host, port)))
    code, out, _ = run_cli(capsys, "serve", runs_dir, "--port", "8123")
    assert code == 0 and out.startswith("makemore serve: http://127.0.0.1:8123/ ") and "token" not in out
    code, out, _ = run_cli(capsys, "serve", runs_dir, "--host", "0.0.0.0", "--port", "8124")
    assert code == 0 and "http://0.0.0.0:8124/?token=" in out
    token = out.split("?token=")[1].split()[0]
    with TestClient(calls[-1][0]) as own:
        assert own.get("/api/runs").status_code == 401
        assert own.get(f"/api/runs?token={token}").status_code == 200
    code, _, err = run_cli(capsys, "serve", runs_dir / "nope")
    assert code == 2 and "no such directory" in err
    code, _, err = run_cli(capsys, "serve", runs_dir, "--token", "a b;c")
    assert code == 2 and "--token: use 8 to 256 letters" in err
    code, out, _ = run_cli(capsys, "serve", runs_dir, "--token", "my-secret-1", "--port", "8125")
    assert code == 0 and "http://127.0.0.1:8125/?token=my-secret-1" in out


def test_cli_serve_without_the_extra(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    code, _, err = run_cli(capsys, "serve")
    assert (
        code == 2
        and err.strip() == "makemore: error: " + 'makemore serve needs the serve extra: pip install "makemore[serve]"'
    )


@pytest.mark.slow  # spawns worker processes (a few seconds each)
def test_worker_processes_answer_alike_and_are_replaced_after_the_time_limit(client, runs_dir):
    """The CLI's setup: sampling in worker processes. Answers are the in-process server's, whichever worker gives
    them and whatever runs beside them; a request past the limit has its worker killed (408) and replaced."""
    bodies = [{"run": "tf", "n": 6, "seed": seed, "nearest": True} for seed in range(6)]
    expected = [sample(client, **body).json()["items"] for body in bodies]
    with TestClient(create_app([runs_dir], workers=2, time_limit=1.5)) as own:
        got: dict[int, list] = {}

        def ask(k: int) -> None:
            got[k] = own.post("/api/sample", json=bodies[k]).json()["items"]

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [got[k] for k in range(6)] == expected
        slow = own.post("/api/sample", json={"run": "tf", "n": 10_000, "seed": 1, "min_distance": 6})
        assert slow.status_code == 408 and "1.5 s limit" in slow.json()["error"]
        pool = own.app.state.pool
        assert own.post("/api/sample", json={**bodies[0], "seed": 99}).status_code == 200
        assert len(pool.live) == 2 and all(worker.process.is_alive() for worker in pool.live)
        assert own.post("/api/sample", json={"run": "nope", "n": 6}).status_code == 404


def test_event_streams_end_when_the_server_is_closing(tmp_path):
    """Ctrl-C: uvicorn waits for open connections before the app's shutdown stops training, so the CLI marks the
    app as closing and the page's event streams end on their own."""
    long = {"max_steps": 100_000, "log_every": 1, "eval_every": 1000, **TINY}
    with TestClient(create_app([tmp_path], runs_dir=tmp_path)) as own:
        job = own.post("/api/train", json={"dataset": "first-names", "model": "transformer", "name": "streamed",
                                           "settings": long}).json()  # fmt: skip
        wait_for(lambda: job_status(own, job["id"])["step"] >= 1)
        lines: list[str] = []

        def listen() -> None:
            with own.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
                lines.extend(stream.iter_lines())

        listener = threading.Thread(target=listen)
        listener.start()
        wait_for(lambda: len(lines) > 0)
        own.app.state.closing = True
        listener.join(10)
        assert not listener.is_alive() and job_status(own, job["id"])["status"] == "running"
