"""Load on `makemore serve`: C concurrent clients each send R POST /api/sample requests (n items each) to a server
started the way a user starts it (`makemore serve RUN`, worker processes and all), and it prints errors and latency
percentiles as JSON.

    python benchmarks/serve_load.py                       # trains a default transformer for 300 steps first
    python benchmarks/serve_load.py --run runs/names-tf   # an existing run
    python benchmarks/serve_load.py --same-seed           # every request alike: a shared link opened many times
    python benchmarks/serve_load.py --run RUN --task-cpu  # no server: a worker's CPU per request, speed-ups on/off


Each request has its own seed unless --same-seed, so the server's answer cache cannot help: every request is sampled.
The clients run in this process (asyncio + httpx) on the same machine, so they take CPU from the server too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of a process, and of its live children (the sampling workers), from /proc; zeros
    where there is no /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def one(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime

    children = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(entry.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return one(pid), sum(one(child) for child in children)


def trained_run(folder: Path, steps: int) -> Path:
    import makemore

    out = folder / "names-transformer"
    makemore.train("first-names", model="transformer", out=out, max_steps=steps, samples=0)
    return out


async def client(
    http: httpx.AsyncClient, url: str, run: str, number: int, args: argparse.Namespace, latencies: list, errors: list
) -> None:
    for i in range(args.requests):
        seed = 1 if args.same_seed else number * 100_000 + i
        body = {"run": run, "n": args.n, "seed": seed, "temperature": 1.0, "top_k": None, "top_p": None, "prefix": "",
                "suffix": "", "regex": "", "min_len": None, "max_len": None, "only_new": False}  # fmt: skip
        if args.no_nearest:
            body["nearest"] = False
        start = time.perf_counter()
        try:
            response = await http.post(url, json=body)
            ok = response.status_code == 200 and len(response.json()["items"]) == args.n
            if not ok:
                errors.append(f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as error:
            errors.append(f"{type(error).__name__}: {error}")
        latencies.append(time.perf_counter() - start)


async def load(base: str, run: str, args: argparse.Namespace, server_pid: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        for seed in range(4):  # warm up: each worker loads the run once
            await http.post(base + "/api/sample", json={"run": run, "n": args.n, "seed": 10**9 + seed})
        start, server_cpu, own_cpu = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
        await asyncio.gather(
            *(client(http, base + "/api/sample", run, c, args, latencies, errors) for c in range(args.clients))
        )
        wall = time.perf_counter() - start
        main_cpu, workers_cpu = (after - before for after, before in zip(cpu_seconds(server_pid), server_cpu))
        own_cpu = time.process_time() - own_cpu
    ms = sorted(1000 * x for x in latencies)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))], 1)

    return {
        "clients": args.clients,
        "requests": len(latencies),
        "n": args.n,
        "seeds": "all alike (cached)" if args.same_seed else "distinct (no cache hits)",
        "nearest": not args.no_nearest,
        "workers": args.workers,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(ms[-1], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "throughput_rps": round(len(latencies) / wall, 1),
        # CPU time per request: the server (its main process and sampling workers) and these clients. On a machine
        # shared with other work, wall-clock latency also counts the time others held the cores.
        "server_main_cpu_ms_per_request": round(1000 * main_cpu / len(latencies), 1),
        "server_workers_cpu_ms_per_request": round(1000 * workers_cpu / len(latencies), 1),
        "client_cpu_ms_per_request": round(1000 * own_cpu / len(latencies), 1),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def task_cpu(run_dir: Path, args: argparse.Namespace, rounds: int = 12, per_round: int = 25) -> dict:
    """What a sampling worker spends on one request (the task alone, in this process, one torch thread), with the
    server's speed-ups (models/transformer_step.py's lean transformer step; the nearest data items in one rapidfuzz
    call) on and off, in alternating rounds so that a machine shared with other work slows both alike. Both give the
    same items and log-probs (tests/test_serve_speed.py)."""
    import torch

    from makemore.generation import novelty
    from makemore.serve.runs import RunTable
    from makemore.serve.schemas import SampleRequest
    from makemore.serve.tasks import sample

    torch.set_num_threads(1)
    table = RunTable([run_dir])
    name = run_dir.resolve().name
    model = table.load(name).model
    lean, one_call = vars(model).get("step"), novelty.ONE_CALL_QUERIES
    body = SampleRequest(run=name, n=args.n, nearest=not args.no_nearest).task_args()
    times: dict[str, list[float]] = {"off": [], "on": []}
    seed = 0
    for _ in range(rounds):
        for setting in times:
            vars(model).pop("step", None)
            if setting == "on" and lean is not None:
                vars(model)["step"] = lean
            novelty.ONE_CALL_QUERIES = one_call if setting == "on" else 0
            start = time.process_time()
            for i in range(per_round):
                sample(table, {**body, "seed": seed + i})
            times[setting].append(1000 * (time.process_time() - start) / per_round)
        seed += per_round
    novelty.ONE_CALL_QUERIES = one_call
    return {
        "n": args.n,
        "nearest": not args.no_nearest,
        "lean_step": lean is not None,
        "requests": rounds * per_round,
        "cpu_ms_per_request_speedups_off": round(statistics.median(times["off"]), 2),
        "cpu_ms_per_request_speedups_on": round(statistics.median(times["on"]), 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained line-mode run (default: train a transformer first)")
    parser.add_argument("--train-steps", type=int, default=300, help="steps for the default run (default: 300)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("-n", type=int, default=20, help="items per request")
    parser.add_argument("--workers", type=int, default=2, help="makemore serve --workers (default: 2)")
    parser.add_argument("--same-seed", action="store_true", help="every request alike (the answer cache serves)")
    parser.add_argument("--no-nearest", action="store_true", help='send "nearest": false (no edit-distance search)')
    parser.add_argument(
        "--task-cpu", action="store_true", help="no server: a worker's CPU per request, its speed-ups on and off"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run = Path(args.run) if args.run else trained_run(Path(work), args.train_steps)
        if args.task_cpu:
            print(json.dumps(task_cpu(run, args), indent=2))
            return
        port = free_port()
        command = [sys.executable, "-m", "makemore", "serve", str(run), "--port", str(port),
                   "--workers", str(args.workers)]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if httpx.get(base + "/api/runs", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"the server did not start: {server.stdout.read() if server.stdout else ''}")
                time.sleep(0.2)
            result = asyncio.run(load(base, run.resolve().name, args, server.pid))
        finally:
            server.terminate()
            server.wait(30)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
