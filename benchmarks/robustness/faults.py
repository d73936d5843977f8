"""Faults injected into real `makemore` processes (the test suite injects the same ones in-process, faster).

    python benchmarks/robustness/faults.py              # all scenarios that this machine allows
    sudo python benchmarks/robustness/faults.py         # + a real full disk and a real read-only filesystem

Scenarios, each a row of the table printed at the end:
  sigterm-train / sigint-train   a signal while training: exit 143 / 130, one line, a checkpoint at that step;
                                 `--resume` then finishes, and the weights equal an uninterrupted run's bit for bit
  sigterm-sample / sigint-sample a signal while sampling: exit 143 / 130, one line
  lock                           a second process on a training run is refused; after the first is SIGKILLed its
                                 stale lock is taken over
  enospc (root)                  the run directory on a tiny tmpfs that fills up at the second evaluation: one line,
                                 the first checkpoint intact, no temp file; after growing the tmpfs, --resume finishes
  read-only (root)               the run directory's filesystem remounted read-only mid-run (EROFS): same checks
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from makemore.runs import checkpoint as ckpt

PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")
ROWS: list[tuple[str, str, int, int, str]] = []  # fault, injection, trials, survived, lost


def makemore(*argv: str) -> list[str]:
    return [sys.executable, "-m", "makemore", *map(str, argv)]


def messages(stderr: str) -> list[str]:
    return [line for line in stderr.split("\n") if line.strip() and "\r" not in line and not PROGRESS.search(line)]


def train_argv(data: Path, run: Path, steps: int = 400, eval_every: int = 20) -> list[str]:
    return ["train", "-i", data, "-o", run, "--force", "--model", "mlp", "--n-embd", "32", "--n-hidden", "256",
            "--batch-size", "32", "--max-steps", steps, "--eval-every", eval_every, "--log-every", "10",
            "--patience", "0", "--threads", "1", "--device", "cpu", "--samples", "0", "--mode", "line"]  # fmt: skip


def write_names(path: Path, count: int = 3000) -> None:
    import random

    rng = random.Random(1)
    items = ["".join(rng.choice("bcdfghjklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
             for _ in range(count)]  # fmt: skip
    path.write_text("\n".join(items) + "\n")


def wait_for(condition, timeout: float = 300, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return condition()
        time.sleep(0.005)
    return False


def logged(run: Path) -> int:
    try:
        return len((run / ckpt.METRICS_FILE).read_text().splitlines())
    except FileNotFoundError:
        return 0


def same_weights(a: Path, b: Path) -> bool:
    ta, tb = ckpt.load_tensors(a / ckpt.WEIGHTS_FILE), ckpt.load_tensors(b / ckpt.WEIGHTS_FILE)
    return set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def leftovers(run: Path) -> list[str]:
    """Temp files of writes that did not complete (a stale .lock is fine: the next process takes it over)."""
    return [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------- scenarios


def signal_during_training(work: Path, data: Path, reference: Path, signum: int, trials: int) -> None:
    name = signal.Signals(signum).name
    survived = 0
    for trial in range(trials):
        run = work / f"{name.lower()}-train-{trial}"
        process = subprocess.Popen(makemore(*train_argv(data, run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        lines_before = 3 + 4 * trial  # a different moment each trial
        wait_for(lambda r=run, n=lines_before: logged(r) >= n, process=process)
        process.send_signal(signum)
        out, err = process.communicate(timeout=300)
        lines = messages(err)
        match = re.match(r"interrupted: checkpoint saved at step (\d+)", lines[0]) if len(lines) == 1 else None
        ok = process.returncode == 128 + signum and match is not None
        if ok:
            step = int(match.group(1))
            ok = ckpt.load_tensors_with_metadata(run / ckpt.CHECKPOINT_FILE)[1] is not None
            resumed = subprocess.run(makemore("train", "--resume", run), capture_output=True, text=True, timeout=900)
            ok = ok and resumed.returncode == 0 and f"resuming at step {step}" in resumed.stdout
            ok = ok and same_weights(run, reference) and not leftovers(run)
        print(
            f"{name} during training, trial {trial + 1}: exit {process.returncode}, {lines}: {'ok' if ok else 'FAIL'}"
        )
        survived += ok
    ROWS.append((f"{name} while training", f"kill -{name[3:]} after the 3rd, 7th, ... log line", trials, survived,
                 "nothing" if survived == trials else "see output"))  # fmt: skip


def signal_during_sampling(work: Path, run: Path, signum: int, trials: int) -> None:
    name = signal.Signals(signum).name
    quick = time.perf_counter()
    subprocess.run(makemore("sample", run, "-n", "1"), capture_output=True, timeout=300)
    startup = time.perf_counter() - quick  # import + load + one item: after this the big job is sampling
    survived = 0
    word = "terminated" if signum == signal.SIGTERM else "interrupted"
    for trial in range(trials):
        process = subprocess.Popen(makemore("sample", run, "-n", "100000", "--max-len", "64", "--seed", trial),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(startup + 1.0 + trial * 0.5)
        still_sampling = process.poll() is None
        process.send_signal(signum)
        _, err = process.communicate(timeout=300)
        ok = still_sampling and process.returncode == 128 + signum and messages(err) == [f"makemore: {word}"]
        print(f"{name} during sampling, trial {trial + 1}: exit {process.returncode}, {messages(err)}: "
              f"{'ok' if ok else 'FAIL'}")  # fmt: skip
        survived += ok
    ROWS.append((f"{name} while sampling", f"kill -{name[3:]} {startup:.0f}s+ into `sample -n 100000`", trials,
                 survived, "nothing (no output is written)"))  # fmt: skip


def two_processes(work: Path, data: Path, trials: int) -> None:
    survived = 0
    for trial in range(trials):
        run = work / f"lock-{trial}"
        first = subprocess.Popen(makemore(*train_argv(data, run, steps=2000)), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda r=run: logged(r) >= 2, process=first)
        second = subprocess.run(makemore("train", "--resume", run, "--max-steps", 2000), capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        refused = second.returncode == 2 and "in use by another makemore process" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait()
        third = subprocess.run(makemore("train", "--resume", run, "--max-steps", 60), capture_output=True, text=True,
                               timeout=900)  # fmt: skip
        ok = refused and third.returncode == 0 and "taken over from pid" in third.stdout and not leftovers(run)
        print(f"two processes, trial {trial + 1}: second refused: {refused}; stale lock taken over: "
              f"{'taken over' in third.stdout}: {'ok' if ok else 'FAIL'}")  # fmt: skip
        survived += ok
    ROWS.append(("two processes on one run", "a 2nd `train --resume` while the 1st trains; then SIGKILL the 1st",
                 trials, survived, "nothing"))  # fmt: skip


def mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return result.returncode == 0


def unwritable(work: Path, data: Path, kind: str, trials: int) -> None:
    """kind: "enospc" (a tmpfs just too small for the second evaluation's writes) or "read-only" (remount ro)."""
    # Sizes of a run's files, from a run on ordinary disk.
    probe = work / "probe"
    subprocess.run(makemore(*train_argv(data, probe, steps=20, eval_every=20)), capture_output=True, check=True)
    base = sum(p.stat().st_size for p in probe.iterdir() if p.name != ckpt.METRICS_FILE)
    weights = (probe / ckpt.WEIGHTS_FILE).stat().st_size
    survived = 0
    for trial in range(trials):
        mount = work / f"{kind}-{trial}"
        # enospc: room for the first evaluation's files and a few pages more, not for a second copy of the weights
        size = base + weights // 2 + 64 * 1024 if kind == "enospc" else 64 * 2**20
        if not mount_tmpfs(mount, size):
            print(f"{kind}: cannot mount a tmpfs here (needs root): skipped")
            return
        try:
            run = mount / "run"
            argv = train_argv(data, run, steps=200, eval_every=20)
            process = subprocess.Popen(makemore(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if kind == "read-only":
                wait_for(lambda r=run: (r / ckpt.CHECKPOINT_FILE).exists(), process=process)
                subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            _, err = process.communicate(timeout=600)
            lines = messages(err)
            reason = "No space left on device" if kind == "enospc" else "Read-only file system"
            step = ckpt.load_tensors_with_metadata(run / ckpt.CHECKPOINT_FILE)
            import json

            kept = json.loads(step[1][ckpt.CHECKPOINT_METADATA_KEY])["state"]["step"]
            ok = (process.returncode == 2 and len(lines) == 1 and reason in lines[0]
                  and f"the last checkpoint (step {kept}) is intact" in lines[0] and not leftovers(run))  # fmt: skip
            ckpt.load_model(run)
            if kind == "enospc":
                subprocess.run(["mount", "-o", f"remount,size={64 * 2**20}", str(mount)], check=True)
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
            resumed = subprocess.run(makemore("train", "--resume", run), capture_output=True, text=True, timeout=900)
            ok = ok and resumed.returncode == 0 and f"resuming at step {kept}" in resumed.stdout
            print(f"{kind}, trial {trial + 1}: {lines}; resumed: {resumed.returncode == 0}: {'ok' if ok else 'FAIL'}")
            survived += ok
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    injection = ("tmpfs sized to fill up at the 2nd evaluation" if kind == "enospc"
                 else "`mount -o remount,ro` after the 1st checkpoint")  # fmt: skip
    ROWS.append((f"{'disk full (ENOSPC)' if kind == 'enospc' else 'read-only filesystem (EROFS)'}", injection, trials,
                 survived, "the steps since the last checkpoint (recomputed on resume)"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "makemore-robustness" / "faults")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data = work / "names.txt"
    write_names(data)
    reference = work / "reference"
    subprocess.run(makemore(*train_argv(data, reference)), capture_output=True, check=True, timeout=900)

    signal_during_training(work, data, reference, signal.SIGTERM, args.trials)
    signal_during_training(work, data, reference, signal.SIGINT, args.trials)
    signal_during_sampling(work, reference, signal.SIGTERM, args.trials)
    signal_during_sampling(work, reference, signal.SIGINT, args.trials)
    two_processes(work, data, args.trials)
    if os.geteuid() == 0:
        unwritable(work, data, "enospc", args.trials)
        unwritable(work, data, "read-only", args.trials)

    print("\n| fault | injection | trials | survived | lost |")
    print("|---|---|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(map(str, row)) + " |")
    sys.exit(0 if all(row[2] == row[3] for row in ROWS) else 1)


if __name__ == "__main__":
    main()
