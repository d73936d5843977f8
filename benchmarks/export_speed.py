"""1,000 names from an exported model, side by side: the NumPy sampler, `makemore sample`, and the HTML page in
headless chromium (time until the items are rendered), for the mlp, gru and transformer at their default sizes.

    python benchmarks/export_speed.py [--steps 200] [--n 1000] [--out benchmarks/results/export_speed.md]

Speed does not depend on how long a model trained, so each is trained for --steps steps only. Each timing is the
best of --repeats runs. "in process" times only the sampling call; "command" is the whole command line (Python
start, imports, loading). The page time runs from navigation to the rendered list (loading the weights included).
"""

from __future__ import annotations

import os

# One thread everywhere, as `makemore sample` runs by default (--threads 1): NumPy's BLAS and torch's intra-op pool
# would otherwise spin against each other and the machine's other work (set before NumPy and torch are imported).
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import makemore  # noqa: E402
from makemore.api import train  # noqa: E402
from makemore.export import export_run  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def page_seconds(browser, page_path: Path, n: int, repeats: int) -> tuple[float, int]:
    times, count = [], 0
    for seed in range(repeats):
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(page_path.as_uri() + f"?n={n}&seed={seed}")
        page.wait_for_selector("body[data-state=done]", timeout=600_000)
        times.append(time.perf_counter() - start)
        count = len(page.query_selector_all(".item"))
        page.close()
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mlp", "gru", "transformer"])
    parser.add_argument("--out", default="benchmarks/results/export_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from playwright.sync_api import sync_playwright

    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        root = Path(tmp)
        for name in args.models:
            run = root / name
            train("first-names", model=name, out=run, max_steps=args.steps, samples=0, time_budget=None)
            export_run(run, "numpy", root / f"{name}-numpy")
            page = export_run(run, "html", root / f"{name}.html")
            spec = importlib.util.spec_from_file_location("sampler", root / f"{name}-numpy" / "makemore_sampler.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            exported, package = module.load(str(root / f"{name}-numpy")), makemore.load(run)
            numpy_s = best(lambda e=exported: e.sample(n=args.n, seed=1), args.repeats)
            torch_s = best(lambda p=package: p.sample(n=args.n, seed=1), args.repeats)
            sampler = [sys.executable, str(root / f"{name}-numpy" / "makemore_sampler.py"), "sample", "-n", str(args.n)]
            numpy_cmd = best(lambda c=sampler: subprocess.run(c + ["--seed", "1"], check=True, capture_output=True), 2)
            cli = [sys.executable, "-m", "makemore", "sample", str(run), "-n", str(args.n), "--seed", "1"]
            torch_cmd = best(lambda c=cli: subprocess.run(c, check=True, capture_output=True), 2)
            page_s, count = page_seconds(browser, page.path, args.n, args.repeats)
            assert count == args.n, f"the page rendered {count} items"
            parameters = package.model.parameter_count()
            rows.append((name, parameters, page.size, numpy_s, torch_s, numpy_cmd, torch_cmd, page_s))
            print(rows[-1], flush=True)
        browser.close()
    lines = [
        f"# {args.n:,} names from exported models (`benchmarks/export_speed.py`)",
        "",
        f"{platform.processor() or platform.machine()}, {sys.platform}, Python {platform.python_version()}; models at "
        f"the registry's default sizes trained {args.steps} steps on first-names; best of {args.repeats} "
        f"(commands: of 2). Times in seconds, one thread each (as `makemore sample`). Load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (the machine is shared: each row's columns ran "
        "back to back, compare within a row). Pages hold float32 "
        "weights where they fit 2 MB, else float16 (`--precision auto`).",
        "",
        "| model | parameters | page (MB) | NumPy sampler, in process | makemore `Run.sample`, in process "
        "| NumPy sampler, command | `makemore sample`, command | HTML page in chromium, to rendered |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, parameters, size, numpy_s, torch_s, numpy_cmd, torch_cmd, page_s in rows:
        lines.append(
            f"| {name} | {parameters:,} | {size / 1e6:.2f} | {numpy_s:.2f} | {torch_s:.2f} | {numpy_cmd:.2f} "
            f"| {torch_cmd:.2f} | {page_s:.2f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
