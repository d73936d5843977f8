"""`create_app`: the web page and its JSON API, over the Python API (`Run`, `makemore.train`, `describe_run`).

Every error is JSON {"error": "one line"} with a 4xx status, worded as the CLI words it: a MakemoreError is 400
(unknown run or job: 404; busy: 409; too slow: 408; too big: 413; queue full: 429), a body of the wrong shape 422.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from makemore.errors import MakemoreError
from makemore.serve import training
from makemore.serve.docs_page import docs_html
from makemore.serve.jobs import FINAL, Job, QueueFull, TrainQueue
from makemore.serve.plots import KINDS, plot_png
from makemore.serve.pool import Pool, TimeLimit, WorkerCrash
from makemore.serve.runs import Conflict, NotFound, RunTable, TooLarge
from makemore.serve.schemas import ClassifyRequest, SampleRequest, ScoreRequest, TrainRequest

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 50 * 1024 * 1024
TOKEN_COOKIE = "makemore_token"


STATUS = [(NotFound, 404), (Conflict, 409), (TimeLimit, 408), (TooLarge, 413), (QueueFull, 429)]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status)


def fast_json(data: dict[str, Any]) -> Response:
    """The hot routes' answers are plain JSON already: skip FastAPI's generic encoder (a large share of a small
    request's time)."""
    return Response(json.dumps(data, ensure_ascii=False, allow_nan=False), media_type="application/json")


def validation_message(exc: RequestValidationError) -> str:
    """Pydantic's first complaint as one line: 'n: Input should be a valid integer'."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if not where and first.get("loc") == ("body",):
        return "the request body must be a JSON object"
    if first.get("type") == "extra_forbidden":
        return f"unknown field {where!r}"
    if first.get("type") == "missing":
        return f"{where}: required"
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


class Guard:
    """Plain ASGI middleware (cheaper per request than Starlette's BaseHTTPMiddleware): refuses a Host header not in
    `allowed_hosts`, and a request without the token (Authorization: Bearer, X-Makemore-Token, ?token= or the
    cookie the page sets)."""

    def __init__(self, app: Any, token: str | None, allowed_hosts: list[str] | None):
        self.app, self.token, self.allowed_hosts = app, token, allowed_hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.allowed_hosts is not None:
            host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
            if host not in self.allowed_hosts:
                message = f"host {host[:60]!r} is not served here; open http://127.0.0.1 instead"
                return await error(403, message)(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        given = (
            request.headers.get("x-makemore-token")
            or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            or request.query_params.get("token")
            or request.cookies.get(TOKEN_COOKIE)
            or ""
        )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            message = "this server needs its token: open the address it printed (with ?token=...)"
            return await error(401, message)(scope, receive, send)
        if scope["path"] != "/":
            return await self.app(scope, receive, send)

        async def with_cookie(message: dict) -> None:  # the page's scripts, images and event streams carry it
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, with_cookie)


def create_app(
    runs: list[str | Path],
    *,
    runs_dir: str | Path | None = None,
    token: str | None = None,
    workers: int = 0,
    time_limit: float = 10.0,
    max_upload: int = MAX_UPLOAD,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The app serving `runs` (run directories or directories of runs; new runs are trained into `runs_dir`).

    token: every request must carry it (Authorization: Bearer, X-Makemore-Token, ?token= or the cookie the page
    gets). workers: sampling processes (0: a thread of this process, for tests). time_limit: seconds a sampling or
    scoring request may compute. allowed_hosts: Host headers accepted (the CLI passes the loopback names when it
    serves without a token, so that a web page elsewhere cannot reach it through DNS rebinding).
    """
    table = RunTable(runs, runs_dir)
    pool = Pool(table, workers=workers, time_limit=time_limit)
    queue: TrainQueue | None = None
    plot_lock = threading.Lock()  # matplotlib figures are drawn one at a time
    plot_cache: dict[tuple, bytes] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal queue
        queue = TrainQueue()
        pool.start()
        try:
            yield
        finally:  # a job stopped here leaves a checkpoint that --resume continues, as Ctrl-C does in the CLI
            await asyncio.to_thread(queue.close)
            pool.close()

    app = FastAPI(
        title="makemore",
        summary="Character-level language models: generate, score, train, inspect, compare.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own pages load scripts from a CDN; ours works offline
        redoc_url=None,
    )
    app.state.table, app.state.pool = table, pool

    def jobs() -> TrainQueue:
        if queue is None:
            raise MakemoreError("the server is starting")
        return queue

    # --------------------------------------------------------------------------------------------- errors, token
    @app.exception_handler(MakemoreError)
    async def makemore_error(request: Request, exc: MakemoreError) -> JSONResponse:
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 400)
        return error(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(WorkerCrash)
    async def crash(request: Request, exc: WorkerCrash) -> JSONResponse:
        return error(500, f"internal error: {exc}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    if token is not None or allowed_hosts is not None:
        app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)

    # ------------------------------------------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(docs_html(app.openapi()), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------------------------------------- runs
    @app.get("/api/runs", summary="The runs served: name, model, best val NLL (nats/token), steps, mode, labels")
    async def list_runs() -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(table.summary)
        busy = jobs().busy_paths()
        return [{**row, "training": table.scan().get(row["name"]) in busy} for row in rows]

    @app.get("/api/runs/{name}", summary="A run's description (as makemore info --format json gives it)")
    async def run_info(name: str) -> dict[str, Any]:
        return await asyncio.to_thread(table.info, name)

    @app.get("/api/runs/{name}/plots/{kind}.png", summary=f"A picture of the run: one of {', '.join(KINDS)}")
    async def run_plot(name: str, kind: str, text: str = "emma") -> Response:
        if kind not in KINDS:
            raise NotFound(f"unknown plot {kind[:40]!r}; choose from {', '.join(KINDS)}")
        key = (name, table.entry(name).stamp, kind, text)

        def draw() -> bytes:
            with plot_lock:
                if key not in plot_cache:
                    if len(plot_cache) >= 64:  # (old stamps of runs in training, other texts)
                        plot_cache.clear()
                    plot_cache[key] = plot_png(table.load(name), name, kind, text)
                return plot_cache[key]

        return Response(await asyncio.to_thread(draw), media_type="image/png")

    @app.get("/api/models", summary="The model registry: name, one-line summary, presets")
    async def models() -> list[dict[str, Any]]:
        return training.models()

    @app.get("/api/datasets", summary="The built-in datasets: name, description, items")
    async def datasets() -> list[dict[str, Any]]:
        return await asyncio.to_thread(training.datasets)

    # --------------------------------------------------------------------------------------- generate, score
    @app.post(
        "/api/sample",
        summary="Generate items (Run.generate): item, logprob, status, nearest data item; label: given a label",
    )
    async def sample(body: SampleRequest) -> Response:
        args = body.task_args()
        if args["seed"] is None and args["best"] is None:
            args["seed"] = secrets.randbelow(1 << 31)  # returned, so that the page's link repeats this list
        result = await pool.call("sample", args)
        return fast_json({"run": body.run, "seed": args["seed"], **result})

    @app.post(
        "/api/score",
        summary="Score items (Run.score): total log-prob and per-character log-probs; labelled runs: label, probs",
    )
    async def score(body: ScoreRequest) -> Response:
        return fast_json(await pool.call("score", body.model_dump()))

    @app.post("/api/classify", summary="p(label | item) under a labelled run (makemore classify): label, probs")
    async def classify(body: ClassifyRequest) -> Response:
        return fast_json(await pool.call("classify", body.model_dump()))

    # ------------------------------------------------------------------------------------------------ training
    train_body = {"content": {"application/json": {"schema": TrainRequest.model_json_schema()}}}

    @app.post(
        "/api/train",
        status_code=202,
        summary="Queue a training job: JSON, or multipart form data with a file and the same fields",
        openapi_extra={"requestBody": train_body},
    )
    async def train(request: Request) -> dict[str, Any]:
        body, upload = await training.read_request(request, max_upload)
        kwargs, name, path = await asyncio.to_thread(training.prepare, table, body, upload, jobs().busy_paths())
        job = jobs().submit(name, path, kwargs)
        return job.public(jobs().position(job))

    @app.get("/api/jobs", summary="Training jobs, newest first")
    async def list_jobs() -> list[dict[str, Any]]:
        return [job.public(jobs().position(job)) for job in reversed(list(jobs().jobs.values()))]

    def find_job(job_id: str) -> Job:
        job = jobs().get(job_id)
        if job is None:
            raise NotFound(f"unknown job {job_id[:40]!r}")
        return job

    @app.get("/api/jobs/{job_id}", summary="A job: status, step, ETA, latest losses")
    async def job_status(job_id: str, events: bool = False) -> dict[str, Any]:
        job = find_job(job_id)
        out = job.public(jobs().position(job))
        if events:
            out["events"] = list(job.events)
        return out

    @app.post("/api/jobs/{job_id}/stop", summary="Stop a job: it saves a checkpoint (resume continues it)")
    async def stop_job(job_id: str) -> dict[str, Any]:
        job = find_job(job_id)
        jobs().stop(job)
        return job.public(jobs().position(job))

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: every training event, then the job's end")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        job = find_job(job_id)

        async def stream():
            sent, quiet = 0, 0
            while True:
                events = job.events[sent:]
                for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
                sent += len(events)
                if events:
                    yield f"event: job\ndata: {json.dumps(job.public(jobs().position(job)))}\n\n"
                if job.status in FINAL and sent >= len(job.events):
                    return
                quiet = 0 if events else quiet + 1
                if quiet and quiet % 60 == 0:
                    yield ": still here\n\n"  # keeps proxies from closing a quiet stream
                if await request.is_disconnected() or getattr(app.state, "closing", False):
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
