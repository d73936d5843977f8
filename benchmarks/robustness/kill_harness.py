"""SIGKILL a training run again and again; resume it each time; check that nothing was lost.

    python benchmarks/robustness/kill_harness.py --kills 20            # the full harness (a few minutes)
    python benchmarks/robustness/kill_harness.py --kills 3 --steps 300 # a short one

1. An uninterrupted reference run: `makemore train` with a fixed seed and checkpoint interval (--eval-every), and
   default thread settings (a run is deterministic by default: no flag is needed for bitwise equality).
2. The same command, SIGKILLed at `--kills` moments, each followed by `makemore train --resume RUN`. Every kill is
   triggered by the run's own progress, never by a clock, so it lands at the same kind of point on any machine:
     started   the process reports it is training (the "device:" / "resuming at step" line)
     logged    the Nth new line of metrics.jsonl (N random): mid-interval, with lines past the last checkpoint
     write     a temp file of an atomic write (checkpoint, best weights) appears in the run directory: the kill
               lands inside the write when it is caught there, just after it otherwise
   After every kill, every file on disk is loaded the way makemore loads it (run.json validated, model.safetensors
   into the model, checkpoint.safetensors with its state) and must load; no temp file may look like a real one.
3. A last `--resume` runs to the end. Then the final val loss, every tensor of model.safetensors and of
   checkpoint.safetensors (weights, optimizer moments, RNG and sampler state), and the metrics log (steps and losses)
   must equal the reference bit for bit.

Prints a table and exits 1 if anything differs. CPU only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from makemore.data.lines import LineSplit
from makemore.runs import checkpoint as ckpt
from makemore.training.evaluation import evaluate


def write_names(path: Path, count: int, seed: int) -> None:
    """A synthetic line-mode dataset (no network, no shared files): pronounceable made-up names."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    names = []
    for _ in range(count):
        syllables = rng.randint(1, 4)
        names.append("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    path.write_text("\n".join(names) + "\n", encoding="utf-8")


def train_argv(data: Path, run: Path, steps: int, eval_every: int) -> list[str]:
    return [
        "train", "-i", str(data), "-o", str(run), "--model", "mlp", "--n-embd", "32", "--n-hidden", "256",
        "--block-size", "6", "--dropout", "0.1", "--batch-size", "32", "--max-steps", str(steps),
        "--eval-every", str(eval_every), "--log-every", "10", "--warmup-steps", "20", "--device", "cpu",
        "--samples", "3", "--seed", "7", "--patience", "0", "--mode", "line",
    ]  # fmt: skip


def makemore(*argv: str) -> list[str]:
    return [sys.executable, "-m", "makemore", *argv]


class Launch:
    """One makemore process whose stdout is watched for the moment training starts."""

    def __init__(self, argv: list[str]):
        self.started = time.perf_counter()
        self.training = threading.Event()
        self.training_at = math.inf
        self.output: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            makemore(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=self._drain_err, daemon=True)
        self.err_reader.start()
        self.stderr: list[str] = []

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("device:") or line.startswith("resuming at step"):
                self.training_at = min(self.training_at, time.perf_counter())
                self.training.set()

    def _drain_err(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> bool:
        """SIGKILL; False when the process had already exited."""
        if self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return True

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(5)
        self.err_reader.join(5)
        return code


POLL_SECONDS = 0.001  # how often a condition on the run directory is looked at (it is what triggers a kill)


def wait_until(condition: Callable[[], bool], alive: Callable[[], bool], timeout: float) -> bool:
    """Look at `condition` until it holds (True), or the process has exited or `timeout` passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return condition()


def temp_files(run: Path) -> set[str]:
    """Temp files of atomic writes in progress (".NAME.XXXX.tmp"), the run lock's aside."""
    try:
        return {n for n in os.listdir(run) if n.endswith(".tmp") and not n.startswith(".lock")}
    except FileNotFoundError:
        return set()


def logged_lines(run: Path) -> int:
    """Complete lines in metrics.jsonl: one per log or evaluation event."""
    try:
        return (run / ckpt.METRICS_FILE).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def after_lines(run: Path, count: int) -> Callable[[], bool]:
    """A condition: `count` more lines in metrics.jsonl than now."""
    target = logged_lines(run) + count
    return lambda: logged_lines(run) >= target


def in_a_write(run: Path, nth: int = 1) -> Callable[[], bool]:
    """A condition: the `nth` new atomic write from now is in progress (its temp file is there)."""
    old, seen = temp_files(run), set()  # leftovers of earlier kills don't count

    def condition() -> bool:
        seen.update(temp_files(run) - old)
        return len(seen) >= nth

    return condition


def check_run_loads(run: Path) -> dict:
    """Load every file of the run the way makemore does; raises if any fails. Returns what was found."""
    found: dict = {"temp_files": sorted(p.name for p in run.glob(".*.tmp") if not p.name.startswith(".lock"))}
    if not (run / ckpt.RUN_FILE).exists():
        found["run_json"] = False
        return found
    found["run_json"] = True
    spec = ckpt.read_run_spec(run)
    if (run / ckpt.WEIGHTS_FILE).exists():
        ckpt.load_model(run)
        found["best"] = True
    if (run / ckpt.CHECKPOINT_FILE).exists():
        tensors, header = ckpt.load_tensors_with_metadata(run / ckpt.CHECKPOINT_FILE)
        meta = json.loads(header[ckpt.CHECKPOINT_METADATA_KEY])
        model = ckpt.build_from_spec(spec)
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        ckpt.load_weights(model, run / ckpt.CHECKPOINT_FILE, weights)
        found["checkpoint_step"] = meta["state"]["step"]
    metrics = run / ckpt.METRICS_FILE
    if metrics.exists():
        steps = []
        for line in metrics.read_bytes().split(b"\n"):
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                pass
        found["logged_step"] = max(steps, default=0)
    return found


def final_val_loss(run: Path) -> float:
    spec, model = ckpt.load_model(run)
    return evaluate(model, LineSplit(ckpt.read_split_items(run, "val"), spec.vocab).eval_batches(1024))["nll"]


def same_tensors(a: Path, b: Path) -> list[str]:
    """Names of tensors that differ (bitwise) between two safetensors files."""
    ta, tb = ckpt.load_tensors(a), ckpt.load_tensors(b)
    if set(ta) != set(tb):
        return sorted(set(ta) ^ set(tb))
    return [name for name in ta if ta[name].dtype != tb[name].dtype or not torch.equal(ta[name], tb[name])]


def metric_lines(run: Path) -> list[tuple]:
    """(event, step, loss) of every log line: wall-clock fields (elapsed, tokens/s) naturally differ."""
    rows = []
    for line in (run / ckpt.METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        rows.append((record["event"], record["step"], record.get("train_loss"), record.get("val_loss")))
    return rows


def run_harness(kills: int, workdir: Path, steps: int = 1500, eval_every: int = 50, seed: int = 0,
                log=print) -> dict:  # fmt: skip
    """The whole experiment; returns a summary dict (ok, kills, table rows, timings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "names.txt"
    write_names(data, 3000, seed=1)
    ref, run = workdir / "reference", workdir / "killed"
    rng = random.Random(seed)

    start = time.perf_counter()
    reference = Launch(train_argv(data, ref, steps, eval_every) + ["--force"])
    if reference.wait(timeout=900) != 0:
        raise RuntimeError("reference run failed:\n" + "".join(reference.stderr))
    ref_seconds = time.perf_counter() - start
    startup_seconds = reference.training_at - reference.started
    log(f"reference run: {ref_seconds:.1f}s ({startup_seconds:.1f}s start-up), val loss {final_val_loss(ref):.6f}")

    kinds = ["started", "logged", "write"]
    rows, failures, launches = [], [], 0
    argv = train_argv(data, run, steps, eval_every) + ["--force"]
    lines_per_interval = eval_every // 10 + 1  # --log-every 10: train lines, and one eval line per checkpoint
    for index in range(kills):
        kind = kinds[index % len(kinds)]
        launch = Launch(argv)
        launches += 1
        alive = launch.alive
        if kind == "started":
            wait_until(launch.training.is_set, alive, timeout=120)
        elif kind == "logged":
            wait_until(after_lines(run, rng.randint(1, 3 * lines_per_interval)), alive, timeout=300)
        else:
            wait_until(launch.training.is_set, alive, timeout=120)
            # the 2nd to 4th write from now: the first is often the best weights of the evaluation just before
            # the next checkpoint, and always killing there would never let the run advance
            wait_until(in_a_write(run, nth=rng.randint(2, 4)), alive, timeout=300)
        killed = launch.kill()
        if not killed:  # it finished (or failed) before the kill: it must have succeeded
            if launch.process.returncode != 0:
                failures.append(f"kill {index + 1}: exited {launch.process.returncode}: {''.join(launch.stderr)}")
            argv = ["train", "--resume", str(run)]
            rows.append({"kill": index + 1, "kind": kind, "landed": "after the end"})
            continue
        try:
            found = check_run_loads(run)
        except Exception as error:  # noqa: BLE001 -- this is what the harness measures
            failures.append(f"kill {index + 1} ({kind}): a file on disk does not load: {error}")
            found = {}
        rows.append({"kill": index + 1, "kind": kind, **found})
        log(f"kill {index + 1:2d} ({kind:8s}): {found}")
        # a run killed before run.json existed has nothing to resume: the same command again (--force) starts it
        argv = ["train", "--resume", str(run)] if found.get("run_json") else argv

    final = Launch(argv)
    launches += 1
    code = final.wait(timeout=900)
    if code != 0:
        failures.append(f"final resume exited {code}: {''.join(final.stderr)[-500:]}")
    summary = {"kills": kills, "launches": launches, "rows": rows, "reference_seconds": ref_seconds}
    if code == 0:
        ref_loss, run_loss = final_val_loss(ref), final_val_loss(run)
        summary.update(reference_val=ref_loss, resumed_val=run_loss)
        if ref_loss != run_loss:
            failures.append(f"final val loss differs: {ref_loss!r} vs {run_loss!r}")
        for name in (ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE):
            differ = same_tensors(ref / name, run / name)
            if differ:
                failures.append(f"{name}: tensors differ from the reference: {differ[:5]}")
        if metric_lines(ref) != metric_lines(run):
            failures.append("metrics.jsonl: steps or losses differ from the reference")
        leftovers = sorted(temp_files(run))  # (the lock file stays: an flock, released when its owner exits)
        if leftovers:
            failures.append(f"files left behind: {leftovers}")
    summary["failures"] = failures
    summary["ok"] = not failures
    summary["survived"] = kills - len([f for f in failures if f.startswith("kill")])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    default_workdir = Path(tempfile.gettempdir()) / "makemore-robustness" / "kill-harness"
    parser.add_argument("--workdir", type=Path, default=default_workdir)
    args = parser.parse_args()
    summary = run_harness(args.kills, args.workdir, args.steps, args.eval_every, args.seed)
    rows = summary["rows"]
    in_write = sum(1 for row in rows if row["kind"] == "write" and row.get("temp_files"))
    live = sum(1 for row in rows if row.get("landed") != "after the end")
    print()
    print(
        "| kills | landed on a live process | kinds (started/logged/write) | write kills that left a half-written "
        "temp file | all files loaded | final val loss (reference / resumed) | bitwise equal |"
    )
    print("|---|---|---|---|---|---|---|")
    kinds = "/".join(str(sum(1 for row in rows if row["kind"] == k)) for k in ("started", "logged", "write"))
    equal = "yes" if summary["ok"] else "NO"
    print(f"| {summary['kills']} | {live} | {kinds} | {in_write} | {summary['survived']}/{summary['kills']} | "
          f"{summary.get('reference_val', float('nan')):.6f} / {summary.get('resumed_val', float('nan')):.6f} "
          f"| {equal} |")  # fmt: skip
    for failure in summary["failures"]:
        print("FAILURE:", failure)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
