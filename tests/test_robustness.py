"""Faults injected on purpose: SIGKILL, SIGTERM/Ctrl-C, a full or unwritable disk, non-finite losses, two processes
on one run, and run directories that are corrupt, mismatched or booby-trapped. See docs/robustness.md."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from safetensors.torch import save as save_safetensors_bytes

from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.models import MODELS, build_model
from makemore.runs import checkpoint as ckpt
from makemore.runs import lock as lock_mod
from makemore.runs.lock import RunLock
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")
TINY = ["--model", "mlp", "--n-embd", "4", "--n-hidden", "16", "--batch-size", "8", "--log-every", "5",
        "--samples", "0", "--threads", "1", "--device", "cpu"]  # fmt: skip


def messages(err: str) -> list[str]:
    """stderr without the progress bar (tqdm redraws with carriage returns: "| 14/30 [")."""
    return [line for line in err.split("\n") if line.strip() and "\r" not in line and not PROGRESS.search(line)]


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = messages(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("makemore: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def load_harness():
    spec = importlib.util.spec_from_file_location(
        "kill_harness", ROOT / "benchmarks" / "robustness" / "kill_harness.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def trained(capsys, tmp_path, names_file):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "-i", names_file, "-o", run, "--max-steps", 20, "--eval-every", 10, *TINY)
    assert code == 0, err
    return run


# ------------------------------------------------------------------------------------------------ 1. SIGKILL


def test_three_sigkills_then_resume_is_bit_exact(tmp_path):
    """The suite's version of benchmarks/robustness/kill_harness.py: real processes (forked from a server that has
    makemore imported, so each start costs milliseconds), real SIGKILLs, each triggered by the run's progress (a log
    line, a checkpoint, a write in progress), default thread settings: the resumed run equals the straight one."""
    from makemore.cli import main as cli_main

    harness = load_harness()
    data, ref, run = tmp_path / "names.txt", tmp_path / "ref", tmp_path / "run"
    harness.write_names(data, 600, seed=1)
    argv = harness.train_argv(data, ref, steps=240, eval_every=20)
    argv[argv.index("--n-hidden") + 1] = "64"
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo: the first optimizer of a process imports it, which takes seconds
    context.set_forkserver_preload(["makemore.cli", "torch._dynamo"])

    def start(argv):
        process = context.Process(target=cli_main, args=(argv,))
        process.start()
        return process

    reference = start(argv)
    reference.join(120)
    assert reference.exitcode == 0

    run_argv = [str(run) if a == str(ref) else str(a) for a in argv]
    resume_argv = ["train", "--resume", str(run)]

    def checkpoint_at(step: int):
        return lambda: harness.check_run_loads(run).get("checkpoint_step", 0) >= step

    def locked_by(process) -> bool:
        info = lock_mod.read_lock(run / lock_mod.LOCK_FILE)
        return bool(info) and info.get("pid") == process.pid

    def in_a_write_or_later():  # inside a write when the poll catches one; a few log lines on at the latest
        write, later = harness.in_a_write(run), harness.after_lines(run, 6)
        return lambda: write() or later()

    triggers = [  # each holds at some point of every run, whatever the machine's speed
        lambda: harness.after_lines(run, 4),  # mid-interval (step 30 logged): a line past the checkpoint
        lambda: checkpoint_at(100),  # just after a checkpoint lands
        in_a_write_or_later,
    ]
    for number, make_trigger in enumerate(triggers):
        process = start(run_argv if number == 0 else resume_argv)
        if number == 1:  # while it trains, a second process on the same run must be refused by the lock
            harness.wait_until(lambda p=process: locked_by(p), process.is_alive, timeout=60)
            assert process.is_alive() and locked_by(process), process.exitcode
            intruder = start(resume_argv)
            intruder.join(60)
            assert intruder.exitcode == 2
        assert harness.wait_until(make_trigger(), process.is_alive, timeout=120)
        assert process.is_alive()
        process.kill()
        process.join(60)
        found = harness.check_run_loads(run)  # every file on disk loads
        assert found["run_json"]
        if "checkpoint_step" in found:
            assert found["checkpoint_step"] % 20 == 0

    final = start(resume_argv)
    final.join(120)
    assert final.exitcode == 0
    assert harness.final_val_loss(run) == harness.final_val_loss(ref)
    for name in (ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE):
        assert harness.same_tensors(ref / name, run / name) == []
    assert harness.metric_lines(ref) == harness.metric_lines(run)  # lines past a checkpoint were dropped on resume
    assert harness.temp_files(run) == set()  # no temp file left (the lock file stays: flock, released at exit)


@pytest.mark.slow
def test_twenty_sigkills_of_the_full_harness(tmp_path):
    summary = load_harness().run_harness(20, tmp_path, steps=600, eval_every=25, log=lambda line: None)
    assert summary["ok"], summary["failures"]
    assert sum(1 for row in summary["rows"] if row.get("landed") != "after the end") >= 15


def test_checkpoint_is_one_file_with_its_state_in_the_header(trained):
    assert not (trained / ckpt.CHECKPOINT_META).exists()
    tensors, header = ckpt.load_tensors_with_metadata(trained / ckpt.CHECKPOINT_FILE)
    meta = json.loads(header[ckpt.CHECKPOINT_METADATA_KEY])
    assert meta["state"]["step"] == 20 and "optimizer" in meta and "rng.torch" in tensors


def test_resume_drops_log_lines_past_the_checkpoint_and_half_written_lines(capsys, trained):
    metrics = trained / ckpt.METRICS_FILE
    with metrics.open("a") as handle:  # what a kill after step 25 leaves: lines past the checkpoint, half a line
        handle.write(json.dumps({"event": "train", "step": 25, "train_loss": 1.0}) + "\n")
        handle.write('{"event": "train", "st')
    code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 30)
    assert code == 0, err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert not [r for r in records if r.get("train_loss") == 1.0]
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == [5, 10, 15, 20, 25, 30]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(capsys, trained):
    (trained / ckpt.CHECKPOINT_FILE).unlink()
    code, out, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 20)
    assert code == 0, err
    assert "starting over from step 0" in out


def test_a_legacy_two_file_checkpoint_out_of_step_is_detected(capsys, trained):
    tensors, header = ckpt.load_tensors_with_metadata(trained / ckpt.CHECKPOINT_FILE)
    meta = json.loads(header[ckpt.CHECKPOINT_METADATA_KEY])
    meta["state"]["checkpoint_step"] = 10  # the JSON of the save before, as a kill between two files would leave
    ckpt.save_tensors(trained / ckpt.CHECKPOINT_FILE, {**tensors, "meta.step": torch.tensor(20)})
    ckpt.write_json(trained / ckpt.CHECKPOINT_META, meta)
    code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 30)
    one_line_error(code, err, "checkpoint.safetensors", "interrupted save")


# -------------------------------------------------------------------------------------- 2. SIGTERM / Ctrl-C


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_training_saves_and_resumes_exactly(capsys, monkeypatch, tmp_path, names_file, signum, code):
    from makemore.data import batching as data

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    argv = ["train", "-i", names_file, "--max-steps", 30, "--eval-every", 10, *TINY]
    assert run_cli(capsys, *argv, "-o", straight)[0] == 0

    calls = {"n": 0}
    original = data.LengthBucketSampler.next

    def next_and_signal(self):
        calls["n"] += 1
        if calls["n"] == 14:  # mid-interval, and during a training step
            os.kill(os.getpid(), signum)
        return original(self)

    monkeypatch.setattr(data.LengthBucketSampler, "next", next_and_signal)
    before = signal.getsignal(signum)
    exit_code, _, err = run_cli(capsys, *argv, "-o", stopped)
    monkeypatch.undo()
    assert exit_code == code
    assert messages(err) == [
        f"interrupted: checkpoint saved at step 14 in {stopped}; continue with: makemore train --resume {stopped}"
    ]
    assert signal.getsignal(signum) == before  # in-process callers get their handlers back
    assert run_cli(capsys, "train", "--resume", stopped)[0] == 0
    for name in (ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE):
        a, b = ckpt.load_tensors(straight / name), ckpt.load_tensors(stopped / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_signal_during_sampling_exits_cleanly(capsys, monkeypatch, trained, signum, code, word):
    original = ckpt.load_model

    def load_then_signal_on_first_step(*args, **kwargs):
        spec, model = original(*args, **kwargs)
        step = model.step

        def step_and_signal(*a, **k):
            os.kill(os.getpid(), signum)
            return step(*a, **k)

        model.step = step_and_signal
        model.forward = lambda *a, _f=model.forward, **k: (os.kill(os.getpid(), signum), _f(*a, **k))[1]
        return spec, model

    monkeypatch.setattr(ckpt, "load_model", load_then_signal_on_first_step)
    exit_code, _, err = run_cli(capsys, "sample", trained, "-n", 5, "--seed", 0)
    assert exit_code == code
    assert messages(err) == [f"makemore: {word}"]


# --------------------------------------------------------------------------------------- 3. disk full / EACCES


def fail_writes_after(monkeypatch, writes_ok: int, error: OSError) -> dict:
    """Let `writes_ok` fsyncs of atomic writes succeed, then fail every write with `error` (after the data went to
    the temp file, as a full disk does)."""
    count = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        count["n"] += 1
        if count["n"] > writes_ok:
            raise error
        return real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    return count


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
    ids=["ENOSPC", "EACCES"],
)
def test_full_or_unwritable_disk_stops_cleanly_and_keeps_the_last_checkpoint(capsys, monkeypatch, trained, error):
    before = {name: digest(trained / name) for name in (ckpt.CHECKPOINT_FILE, ckpt.WEIGHTS_FILE)}
    fail_writes_after(monkeypatch, 2, error)  # run.json on resume, then the first save of the next evaluation fails
    code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 40, "--eval-every", 10)
    monkeypatch.undo()
    line = one_line_error(code, err, error.strerror, "the last checkpoint (step 20) is intact", "--resume")
    assert "stopped at step 30" in line
    assert {name: digest(trained / name) for name in before} == before  # old files intact
    assert not [p.name for p in trained.iterdir() if p.name.endswith(".tmp")]  # no temp file left
    assert lock_mod.read_lock(trained / lock_mod.LOCK_FILE) is None  # the lock is released (its file names no owner)
    ckpt.load_model(trained)
    code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 40)  # space freed: carry on
    assert code == 0, err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_run_directory_for_real(capsys, trained):
    trained.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 40)
    finally:
        trained.chmod(0o755)
    one_line_error(code, err, "Permission denied")


def test_failed_append_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    ckpt.append_line(path, {"step": 1})

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[:5])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: Full(real_open(*a, **k)))
    with pytest.raises(OSError):
        ckpt.append_line(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'


# ------------------------------------------------------------------------------------------ 4. non-finite loss


def nan_trainer(run_dir: Path, items: list[str], bad_steps: set[int], skip: bool) -> Trainer:
    vocab = Vocab.from_texts(items)
    torch.manual_seed(0)
    model = build_model("mlp", MODELS["mlp"].config_class(n_embd=4, n_hidden=16), vocab.size)
    forward = model.forward
    calls = {"n": 0}

    def poisoned(x, y=None):
        logits, loss = forward(x, y)
        if y is not None and model.training:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                loss = loss * float("nan")
        return logits, loss

    model.forward = poisoned
    splits = {name: LineSplit(items, vocab) for name in ("train", "val", "test")}
    config = TrainConfig(max_steps=30, batch_size=8, eval_every=10, log_every=5, device="cpu", skip_nonfinite=skip)
    run_dir.mkdir()
    return Trainer(model, splits, config, run_dir)


def test_nonfinite_loss_stops_at_that_step_and_leaves_the_best_weights(tmp_path, names_file):
    items = names_file.read_text().split()
    trainer = nan_trainer(tmp_path / "run", items, {17}, skip=False)
    trainer.config = TrainConfig(**{**vars(trainer.config), "max_steps": 16})
    trainer.train()  # evaluations at 10 and 16 write the best weights
    best = digest(tmp_path / "run" / ckpt.WEIGHTS_FILE)
    trainer.config = TrainConfig(**{**vars(trainer.config), "max_steps": 30})
    with pytest.raises(MakemoreError, match="loss became nan at step 17"):
        trainer.train()
    assert digest(tmp_path / "run" / ckpt.WEIGHTS_FILE) == best


def test_skip_nonfinite_skips_the_update_and_finishes(tmp_path, names_file):
    items = names_file.read_text().split()
    trainer = nan_trainer(tmp_path / "run", items, {3, 12}, skip=True)
    warnings = []
    trainer.on_event = lambda event: warnings.append(event["message"]) if event["event"] == "warning" else None
    result = trainer.train()
    assert result["step"] == 30 and trainer.skipped_steps == 2
    assert [w.split(":")[0] for w in warnings] == ["the training loss became nan at step 3"] * 1 + [
        "the training loss became nan at step 12"
    ]
    weights = ckpt.load_tensors(tmp_path / "run" / ckpt.WEIGHTS_FILE)
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_skip_nonfinite_gives_up_after_many_in_a_row(tmp_path, names_file):
    items = names_file.read_text().split()
    trainer = nan_trainer(tmp_path / "run", items, set(range(5, 100)), skip=True)
    with pytest.raises(MakemoreError, match="20 steps in a row"):
        trainer.train()


def test_absurd_learning_rate_is_one_line_naming_the_step(capsys, tmp_path, names_file):
    code, _, err = run_cli(capsys, "train", "-i", names_file, "-o", tmp_path / "r", "--max-steps", 50, "--lr", "1e30",
                           "--warmup-steps", 0, *TINY)  # fmt: skip
    one_line_error(code, err, "at step", "--skip-nonfinite")


# ---------------------------------------------------------------------------------------------------- 5. lock


def hold_lock_in_another_process(run: Path) -> subprocess.Popen:
    """A process that takes the run's lock and keeps it until killed; returns once it holds it."""
    code = (
        "import sys, time; from makemore.runs.lock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); print(1, flush=True); time.sleep(120)"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "1"
    return other


def test_a_second_process_is_refused_and_a_killed_owners_lock_is_free(capsys, trained):
    other = hold_lock_in_another_process(trained)
    try:
        code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 30)
        one_line_error(code, err, "in use by another makemore process", f"pid {other.pid}")
        code, _, err = run_cli(capsys, "train", "-i", trained / "train.txt", "-o", trained, "--force", *TINY)
        one_line_error(code, err, "in use")  # --force must not wipe a run that is training
        assert (trained / ckpt.CHECKPOINT_FILE).exists()
    finally:
        other.kill()  # SIGKILL: the kernel releases its lock
        other.wait()
    code, out, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 30)
    assert code == 0, err


def test_lock_refuses_a_second_holder_in_the_same_process_and_ignores_leftover_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / lock_mod.LOCK_FILE).write_bytes(pickle.dumps(["not", "json"]))  # a leftover file is not a lock
    with RunLock(run) as lock:
        assert lock.held
        with pytest.raises(MakemoreError, match="in use"):
            RunLock(run).acquire()
    with RunLock(run) as lock:  # released: free again
        assert lock.held


# -------------------------------------------------------------------------------- 6. loading never runs code


class Payload:
    """Unpickling this writes a file: the proof that something ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def payloads(marker: Path, tmp_path: Path) -> dict[str, bytes]:
    zipped = tmp_path / "payload.pt"
    torch.save({"weights": Payload(marker)}, zipped)  # what torch.load(weights_only=False) would run
    return {"pickle": pickle.dumps(Payload(marker)), "torch.save": zipped.read_bytes()}


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(payloads(marker, tmp_path)["pickle"])
    assert marker.exists()  # so its absence below means nothing was unpickled


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize(
    "name", [ckpt.RUN_FILE, ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE, ckpt.CHECKPOINT_META, "train.txt", "val.txt",
             ckpt.METRICS_FILE, lock_mod.LOCK_FILE],
)  # fmt: skip
def test_a_planted_pickle_never_runs(capsys, tmp_path, trained, kind, name):
    marker = tmp_path / "pwned"
    (trained / name).write_bytes(payloads(marker, tmp_path)[kind])
    commands = [["sample", trained, "-n", 2, "--seed", 0], ["eval", trained], ["score", trained, "emma"]]
    if name == ckpt.METRICS_FILE:  # the log is read by the plots, too
        commands.append(["plot", "loss", trained, "--out", tmp_path / "loss.png"])
    commands.append(["train", "--resume", trained, "--max-steps", 25])
    results = [run_cli(capsys, *argv) for argv in commands]
    assert not marker.exists()
    for code, _, err in results:
        assert "Traceback" not in err
        if code != 0:
            one_line_error(code, err, name if name not in (ckpt.CHECKPOINT_META,) else "")
    fatal = {ckpt.RUN_FILE: 4, ckpt.WEIGHTS_FILE: 3, ckpt.CHECKPOINT_FILE: 1, "train.txt": 2, "val.txt": 2,
             ckpt.METRICS_FILE: 1}  # fmt: skip
    assert sum(code == 2 for code, _, _ in results) >= fatal.get(name, 0)


def test_no_module_can_unpickle():
    for path in (ROOT / "src" / "makemore").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        assert "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


# ----------------------------------------------------------------------------------- 7. corrupt, mismatched runs


def edit_run_json(run: Path, change) -> None:
    obj = json.loads((run / ckpt.RUN_FILE).read_text())
    change(obj)
    (run / ckpt.RUN_FILE).write_text(json.dumps(obj))


CORRUPTIONS = {
    "truncated weights": lambda r: (r / ckpt.WEIGHTS_FILE).write_bytes((r / ckpt.WEIGHTS_FILE).read_bytes()[:-100]),
    "empty weights": lambda r: (r / ckpt.WEIGHTS_FILE).write_bytes(b""),
    "header bomb": lambda r: (r / ckpt.WEIGHTS_FILE).write_bytes((2**62).to_bytes(8, "little") + b"{}"),
    "wrong shapes": lambda r: (r / ckpt.WEIGHTS_FILE).write_bytes(save_safetensors_bytes(
        {k: torch.zeros(3, 3) if v.dim() == 2 else v for k, v in ckpt.load_tensors(r / ckpt.WEIGHTS_FILE).items()})),
    "NaN weights": lambda r: (r / ckpt.WEIGHTS_FILE).write_bytes(save_safetensors_bytes(
        {k: v * float("nan") for k, v in ckpt.load_tensors(r / ckpt.WEIGHTS_FILE).items()})),
    "vocab too big": lambda r: edit_run_json(r, lambda o: o["vocab"].append("Z")),
    "vocab too small": lambda r: edit_run_json(r, lambda o: o["vocab"].pop()),
    "vocab with a line break": lambda r: edit_run_json(r, lambda o: o["vocab"].__setitem__(0, "\n")),
    "newer format": lambda r: edit_run_json(r, lambda o: o.__setitem__("format_version", 99)),
    "unknown config key": lambda r: edit_run_json(r, lambda o: o["model_config"].__setitem__("n_warp", 9)),
    "wrong config type": lambda r: edit_run_json(r, lambda o: o["model_config"].__setitem__("n_embd", "4")),
    "NaN config value": lambda r: (r / ckpt.RUN_FILE).write_text(
        (r / ckpt.RUN_FILE).read_text().replace('"dropout": 0.3', '"dropout": NaN')),
    "absurd size": lambda r: edit_run_json(r, lambda o: o["model_config"].update(n_embd=10**6, n_hidden=10**6)),
    "absurd product": lambda r: edit_run_json(r, lambda o: o["model_config"].update(n_embd=60000, n_hidden=60000)),
    "deep JSON": lambda r: (r / ckpt.RUN_FILE).write_text("[" * 100_000 + "]" * 100_000),
    "not JSON": lambda r: (r / ckpt.RUN_FILE).write_bytes(b"\xff\xfe garbage"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_run_is_one_line_naming_the_file(capsys, trained, case):
    CORRUPTIONS[case](trained)
    # the weights don't fit the vocabulary that run.json declares: the weights file is named
    broken = ("weights", "shapes", "bomb", "vocab too")
    file = ckpt.WEIGHTS_FILE if any(word in case for word in broken) else ckpt.RUN_FILE
    for argv in (["sample", trained, "-n", 2], ["eval", trained], ["score", trained, "emma"]):
        code, _, err = run_cli(capsys, *argv)
        one_line_error(code, err, file)


CHECKPOINT_TAMPERING = {
    "step is text": lambda m, t: m["state"].__setitem__("step", "ten"),
    "negative step": lambda m, t: m["state"].__setitem__("step", -5),
    "unknown state key": lambda m, t: m["state"].__setitem__("rogue", 1),
    "lr is text": lambda m, t: m["optimizer"]["param_groups"][0].__setitem__("lr", "fast"),
    "betas is NaN": lambda m, t: m["optimizer"]["param_groups"][0].__setitem__("betas", [float("nan"), 0.9]),
    "moment of the wrong shape": lambda m, t: t.__setitem__(
        next(k for k in t if k.endswith("exp_avg")), torch.zeros(2, 2)),
    "sampler position out of range": lambda m, t: t.__setitem__("sampler.position", torch.tensor(10**6)),
    "RNG state garbage": lambda m, t: t.__setitem__("rng.torch", torch.zeros(3, dtype=torch.uint8)),
    "no metadata": None,
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CHECKPOINT_TAMPERING))
def test_tampered_checkpoint_is_one_line_on_resume(capsys, trained, case):
    path = trained / ckpt.CHECKPOINT_FILE
    tensors, header = ckpt.load_tensors_with_metadata(path)
    meta = json.loads(header[ckpt.CHECKPOINT_METADATA_KEY])
    if CHECKPOINT_TAMPERING[case] is None:
        ckpt.save_tensors(path, tensors)
    else:
        CHECKPOINT_TAMPERING[case](meta, tensors)
        ckpt.save_tensors(path, tensors, {ckpt.CHECKPOINT_METADATA_KEY: json.dumps(meta)})
    code, _, err = run_cli(capsys, "train", "--resume", trained, "--max-steps", 30)
    one_line_error(code, err, "checkpoint")


def test_absurd_sizes_from_flags_are_refused_before_allocating(capsys, tmp_path, names_file):
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "-i", names_file, "-o", tmp_path / "r", "--model", "mlp",
                           "--n-embd", 60000, "--n-hidden", 60000, "--samples", 0)  # fmt: skip
    one_line_error(code, err, "parameters")
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------------------------ 9. big inputs


def test_large_file_tensorises_in_memory_proportional_to_its_characters(tmp_path):
    items = [f"name{i % 9973}x" for i in range(200_000)] + ["y" * 200]  # one long item must not pad everyone
    vocab = Vocab.from_texts(items)
    start = time.perf_counter()
    split = LineSplit(items, vocab)
    assert time.perf_counter() - start < 10
    chars = sum(map(len, items))
    assert split.stream.numel() == chars + len(items) + 1 and split.stream.element_size() == 4
    x, y = split.rows(torch.tensor([0, len(items) - 1]))
    assert vocab.decode(x[0].tolist()) == items[0] and vocab.decode(y[1].tolist()) == items[-1]
    assert x.shape == (2, 201) and int((y[0] != -1).sum()) == len(items[0]) + 1


def test_a_huge_single_line_is_refused_quickly(capsys, tmp_path):
    path = tmp_path / "one-line.txt"
    path.write_bytes(b"a" * 5_000_000 + b"\n")
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "-i", path, "-o", tmp_path / "r", "--mode", "line")
    one_line_error(code, err, "line 1 is 5000000 characters long, over --max-item-len 256")
    assert time.perf_counter() - start < 10


def test_resume_after_early_stopping_does_not_train_on(capsys, tmp_path, names_file):
    """Found by the kill harness: a run killed right after early stopping's last checkpoint trained on when resumed."""
    run = tmp_path / "run"
    argv = ["train", "-i", names_file, "-o", run, "--max-steps", 400, "--eval-every", 5, "--patience", 1, *TINY]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    stopped = re.search(r"stopped: early_stopping at step (\d+)", out)
    assert stopped, out
    log = (run / ckpt.METRICS_FILE).read_text()
    code, out, err = run_cli(capsys, "train", "--resume", run)
    assert code == 0, err
    assert f"stopped: early_stopping at step {stopped.group(1)}" in out
    assert (run / ckpt.METRICS_FILE).read_text() == log
