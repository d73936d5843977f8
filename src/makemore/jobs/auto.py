"""`makemore train --model auto`: the best model a time budget buys, as one run.

    OUT/auto.json          the plan and which members are finished (rewritten atomically after each)
    OUT/parts/1-ngram/     the Kneser-Ney n-gram: a normal run, fitted first
    OUT/parts/2-gru/ ...   the neural members: normal runs, trained one after another
    OUT/parts/2-gru-knn/   a recurrent member with a memory of its training states (`makemore knn`), built once
                           the members are trained, and mixed in the member's place (small data only: auto_plan)
    OUT/splits/            labelled data: the n-gram's split as label<TAB>item files (members with another seed)
    OUT/run.json, ...      a mix of the members finished so far (weights fitted on val): after the n-gram
                           it is usable at once, and it is re-fitted as each member finishes

Stopped at any moment (Ctrl-C, SIGKILL), `--resume OUT` keeps the finished members, resumes the interrupted one
exactly (its own checkpoint) and trains the rest. The plan itself is a pure function (auto_plan.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from makemore.data.labels import LABELS_SUFFIX
from makemore.data.lines import BUILTIN_DATASETS
from makemore.errors import MakemoreError
from makemore.generation.classify import conditioned
from makemore.generation.sample import DecodeOptions
from makemore.generation.stream import stream_text
from makemore.jobs import knn as knn_job
from makemore.jobs import mix as mix_job
from makemore.jobs.auto_parallel import run_side_by_side, wait_for_exit
from makemore.jobs.auto_plan import (
    DataSummary,
    Member,
    Plan,
    describe_plan,
    make_plan,
    wave_budget,
)
from makemore.jobs.train_data import DataOptions, load_data
from makemore.jobs.train_results import STREAM_SAMPLE_CHARS, draw_items, status
from makemore.models.ngram import NGramConfig
from makemore.runs import checkpoint as ckpt
from makemore.runs import create as run_dirs
from makemore.runs.lock import RunLock
from makemore.training.devices import resolve_device

AUTO_MODEL = "auto"
AUTO_FILE = "auto.json"
PARTS_DIR = "parts"
SPLITS_DIR = "splits"  # labelled data: the n-gram's split as label<TAB>item files, for members with another seed
NGRAM_MEMBER = "1-ngram"
BUILTIN_BUDGET = 120.0  # the default job (a built-in list of names): about 2 minutes
FILE_BUDGET = 600.0  # the user's own file: 10 minutes
# The command's start before this module's clock does (Python and PyTorch imported: 1.9-2.1 s on the 2-core CPU),
# which the budget, the whole command's wall time, also pays: Tiny Shakespeare in 30 minutes ended 1,799 s after
# the plan's clock started and 1,801.6 s after the command did.
STARTUP_SECONDS = 3.0
MEMBER_EXIT_SECONDS = 120.0  # how long a resume waits for the members of a killed run to save and stop
ALLOWED_SETTINGS = ("seed", "device", "time_budget")  # everything else is the plan's to choose

Events = Callable[[dict[str, Any]], None]


def is_auto_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / AUTO_FILE).is_file()


def default_budget(input: str) -> float:
    builtin = input in BUILTIN_DATASETS and not Path(input).exists()
    return BUILTIN_BUDGET if builtin else FILE_BUDGET


def summarize(options: DataOptions, seed: int) -> DataSummary:
    """The data's shape, read the way every member will read it (same options, same seed: the same split)."""
    data = load_data(options, NGramConfig(), seed)
    alphabet = data.vocab.size - 1  # the boundary token is not a character
    if data.stream:
        train_tokens = int(data.info["offsets"]["train"][1] - data.info["offsets"]["train"][0])
        return DataSummary("stream", 0, train_tokens, alphabet, 0.0)
    train = data.items["train"]
    chars = sum(map(len, train))
    labels = len(data.info.get("labels", []))
    longest = max(map(len, train), default=0)
    return DataSummary("line", len(train), chars + len(train), alphabet, chars / max(len(train), 1), labels, longest)


def check_settings(settings: dict[str, Any]) -> None:
    extra = sorted(set(settings) - set(ALLOWED_SETTINGS))
    if extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise MakemoreError(
            f"{flags}: --model auto chooses the models and their settings; give data flags, --time-budget, --seed "
            "or --device (or pick a --model to set it yourself)"
        )


# ------------------------------------------------------------------------------------------------------ the job


class AutoJob:
    """Runs a plan member by member in OUT, recording progress in OUT/auto.json."""

    def __init__(
        self,
        train: Callable[..., dict[str, Any]],
        out: Path,
        state: dict[str, Any],
        on_event: Events | None,
        should_stop: Callable[[], bool] | None,
    ):
        self.train = train  # jobs.train.train: each member is a normal run
        self.out = out
        self.state = state  # {"plan", "data", "seed", "device", "done": {name: result summary}}
        self.plan = Plan.from_json(state["plan"])
        self.on_event = on_event
        self.should_stop = should_stop
        self.mixed: dict[str, Any] = {}  # the last mix: its val NLL and tokens
        self.deadline: float | None = None  # time.monotonic() by which the whole plan should end

    def emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def info(self, message: str) -> None:
        self.emit({"event": "info", "message": message})

    def save_state(self) -> None:
        ckpt.atomic_write(self.out / AUTO_FILE, (json.dumps(self.state, indent=1) + "\n").encode("utf-8"))

    def member_dir(self, name: str) -> Path:
        return self.out / PARTS_DIR / name

    def names(self) -> list[str]:
        """Every part of the plan: the n-gram, the members, the memories."""
        memories = [memory_name(member.name) for member in self.plan.remembered()]
        return [NGRAM_MEMBER] + [member.name for member in self.plan.members] + memories

    def mixed_names(self) -> list[str]:
        """The parts the mix is made of: a member with a memory is mixed as its memory."""
        done = self.state["done"]
        names = [memory_name(m.name) if memory_name(m.name) in done else m.name for m in self.plan.members]
        return [NGRAM_MEMBER] + names

    def run(self, deadline: float | None) -> dict[str, Any]:
        """Train what is not done yet: the n-gram, then the neural members in waves of `plan.slots` side by side.
        Returns {"interrupted": bool, ...}."""
        done = self.state["done"]
        self.deadline = deadline
        self.wait_for_earlier_members()
        if NGRAM_MEMBER not in done:
            self.info(f"member 1/{len(self.names())}: {NGRAM_MEMBER}")
            ngram = Member(NGRAM_MEMBER, "ngram", 0.0, {})
            result = self.train(**self.member_kwargs(ngram, None), samples=0, on_event=self.tagged(NGRAM_MEMBER))
            self.record(NGRAM_MEMBER, result)
            self.remix()  # a usable run at once
        # from here a stop request (the CLI's first Ctrl-C) is honoured between steps; during the n-gram's fit,
        # which has no steps, Ctrl-C interrupts it (the fit starts over on resume)
        self.emit({"event": "plan"})
        pending = [member for member in self.plan.members if member.name not in done]
        slots = max(1, self.plan.slots)
        waves = [pending[i : i + slots] for i in range(0, len(pending), slots)]
        for k, wave in enumerate(waves):
            seconds = self.wave_seconds(deadline, len(waves) - k)
            shown = ", ".join(f"{m.name} {seconds or m.seconds:.0f} s" for m in wave)
            self.info(("side by side: " if len(wave) > 1 else "member: ") + shown + self.time_left())
            jobs = [(member.name, self.member_kwargs(member, seconds)) for member in wave]
            if len(wave) == 1:
                name, kwargs = jobs[0]
                result = self.train(**kwargs, samples=0, on_event=self.tagged(name), should_stop=self.should_stop)
                stopped = self.record(name, result)
            else:
                stopped = run_side_by_side(
                    self.train, jobs, self.member_progress, self.record, self.should_stop, self.started_members
                )
                self.started_members({})
            if any(member.name in done for member in wave):
                self.remix()  # once a wave (a member, or members side by side) ends
            if stopped:
                return {"interrupted": True, "step": 0}
        if self.remember():
            return {"interrupted": True, "step": 0}
        if not self.mixed:  # resumed after the last member finished: the mix is fitted again (seconds)
            self.remix()
        return {"interrupted": False}

    def remember(self) -> bool:
        """Give each finished recurrent member of the plan a memory of its training states (a new run beside it),
        then mix again. Returns whether a stop request ended it (a memory half built is built again on resume)."""
        done, built = self.state["done"], False
        for member in self.plan.remembered():
            name = memory_name(member.name)
            if member.name not in done or name in done:
                continue
            if self.should_stop is not None and self.should_stop():
                return True
            started = time.monotonic()
            result = knn_job.build_knn(self.member_dir(member.name), self.member_dir(name), force=True)
            elapsed = time.monotonic() - started
            done[name] = {"model": "knn", "val_nll": result["val_nll"], "elapsed": elapsed}
            self.info(
                f"  {name}: val {result['val_nll']:.4f} ({member.name} alone {result['net_val_nll']:.4f}; "
                f"temperature {result['temperature']:.3g}, lam {result['lam']:g}) "
                f"after {elapsed:.0f} s{self.time_left()}"
            )
            self.save_state()
            built = True
        if built:
            self.remix()
        return False

    def started_members(self, pids: dict[str, int]) -> None:
        """Side-by-side members' process ids, kept in auto.json until they end (see wait_for_earlier_members)."""
        self.state["running"] = pids
        self.save_state()

    def wait_for_earlier_members(self) -> None:
        """A resumed run whose previous process was killed (SIGKILL) while members ran side by side: those members
        notice at their next step, save and stop; wait for them before taking their run directories over."""
        pids = list(self.state.get("running", {}).values())
        if pids and wait_for_exit(pids, 0.0):
            self.info(f"waiting for the members of the stopped run (pids {', '.join(map(str, pids))}) to save and stop")
            still = wait_for_exit(pids, MEMBER_EXIT_SECONDS)
            for pid in still:  # stuck (or not ours): stop it; its last checkpoint is where it resumes
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            wait_for_exit(still, MEMBER_EXIT_SECONDS)
        self.started_members({})

    def wave_seconds(self, deadline: float | None, waves_left: int) -> float | None:
        """Equal shares of the time left for each wave (members that stop early pass time on); None on resume:
        the planned seconds."""
        if deadline is None:
            return None
        return wave_budget(deadline - time.monotonic(), self.plan.end_reserve(), waves_left)

    def member_kwargs(self, member: Member, seconds: float | None) -> dict[str, Any]:
        """train() keyword arguments: resume a member that has a run directory, else start it."""
        run_dir = self.member_dir(member.name)
        if (run_dir / ckpt.RUN_FILE).is_file():
            return {"resume": run_dir}
        kwargs = dict(self.state["data"], seed=self.state["seed"], device=self.state["device"])
        if member.repeat:
            kwargs |= self.split_files(member.repeat)
        kwargs |= {"model": member.model, "out": run_dir, "force": True, **member.settings}
        if member.model != "ngram":
            kwargs["time_budget"] = seconds if seconds is not None else member.seconds
        return kwargs

    def split_files(self, repeat: int) -> dict[str, Any]:
        """Data arguments for a member that repeats a family with another seed: the seed also cuts the split, so
        it reads the n-gram's stored split (train, val and test as files) rather than cutting its own. Labelled
        data: the split as label<TAB>item files in OUT/splits/, written once."""
        ngram = self.member_dir(NGRAM_MEMBER)
        splits = [name for name in ("train", "val", "test") if ckpt.read_split_items(ngram, name)]
        files = {name: ngram / f"{name}.txt" for name in splits}
        if self.state["data"].get("labelled"):
            files = {name: self.out / SPLITS_DIR / f"{name}.tsv" for name in splits}
            for name, path in files.items():
                if not path.is_file():
                    items = ckpt.read_split_items(ngram, name)
                    labels = ckpt.read_split_items(ngram, name + LABELS_SUFFIX)
                    path.parent.mkdir(exist_ok=True)
                    lines = "".join(f"{label}\t{item}\n" for label, item in zip(labels, items))
                    ckpt.atomic_write(path, lines.encode("utf-8"))
        return {
            "input": str(files["train"]),
            "val_file": str(files["val"]),
            "test_file": str(files["test"]) if "test" in files else None,
            "mode": "line",
            "seed": self.state["seed"] + repeat,
        }

    def record(self, name: str, result: dict[str, Any]) -> bool:
        """A member's end: kept in auto.json and mixed in, unless it was interrupted. Returns whether it was."""
        if result["stopped"] == "interrupted":
            return True
        model = "ngram" if name == NGRAM_MEMBER else self.member(name).model
        val = result["val"]["nll"] if result["val"] else _run_val(self.member_dir(name))
        self.state["done"][name] = {"model": model, "val_nll": val, "elapsed": result["elapsed"]}
        self.info(f"  {name}: val {val:.4f} after {result['elapsed']:.0f} s (stopped: {result['stopped']})")
        self.save_state()
        return False

    def member(self, name: str) -> Member:
        return next(member for member in self.plan.members if member.name == name)

    def member_progress(self, event: dict[str, Any]) -> None:
        """A side-by-side member's evaluation, as one line."""
        seconds = self.member(event["member"]).seconds
        self.info(
            f"  {event['member']}: step {event['step']:,}, val {event['val_loss']:.4f} "
            f"(best {event['best_val_loss']:.4f}), {event['elapsed']:.0f} s of ~{seconds:.0f}{self.time_left()}"
        )

    def time_left(self) -> str:
        """The whole plan's time left, for progress lines (a resumed plan has no deadline to count down to)."""
        if self.deadline is None:
            return ""
        left = max(self.deadline - time.monotonic(), 0.0)
        return f" ({int(left // 60)}:{int(left % 60):02d} left in all)"

    def tagged(self, name: str) -> Events:
        def forward(event: dict[str, Any]) -> None:
            self.emit({**event, "member": name})

        return forward

    def remix(self) -> dict[str, Any]:
        """Write the mix of the finished members into OUT (a usable run after each member)."""
        done = [name for name in self.mixed_names() if name in self.state["done"]]
        runs = [self.member_dir(name) for name in done]
        # both ways of mixing, the better on val kept (names in 30 minutes: linear 1.8682, log-linear 1.8659)
        result = mix_job.mix_runs(runs, self.out, force=True, min_runs=1, combine="best")
        nll = result["val_nll"]
        self.mixed = {"val": {"nll": nll, "bpc": nll / math.log(2), "ppl": math.exp(nll), "tokens": result["tokens"]}}
        self.info(
            f"{result['combine']} mix of {len(done)}: val {nll:.4f} ("
            + ", ".join(f"{name} {m['weight']:.2f}" for name, m in zip(done, result["members"]))
            + ")"
        )
        weights = {name: member["weight"] for name, member in zip(done, result["members"])}
        for name in done:
            self.state["done"][name]["weight"] = weights[name]
        self.save_state()
        spec_json = ckpt.read_json(self.out / ckpt.RUN_FILE)
        replaced = [name for name in self.names() if name in self.state["done"] and name not in done]
        for name in replaced:
            self.state["done"][name].pop("weight", None)
        self.save_state()
        spec_json["data"]["auto"] = {
            "budget": self.plan.budget,
            "members": [{"name": name, **self.state["done"][name]} for name in done],
            "replaced": [{"name": name, **self.state["done"][name]} for name in replaced],  # mixed as their memory
            "planned": self.names(),
        }
        ckpt.write_json(self.out / ckpt.RUN_FILE, spec_json)
        return result


def memory_name(member: str) -> str:
    return f"{member}-knn"


def _run_val(run_dir: Path) -> float | None:
    from makemore.runs.info import describe_run

    return describe_run(run_dir).get("best_val_loss")


# ---------------------------------------------------------------------------------------------------------- API


def train_auto(
    train: Callable[..., dict[str, Any]],
    options: DataOptions,
    out: Path | None,
    *,
    resume: Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    samples: int = 20,
    on_event: Events | None = None,
    should_stop: Callable[[], bool] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan, train and mix (see the module docstring); `train(model="auto")` lands here. Returns train()'s result
    keys (run_dir, model "mix", stopped, val, samples, ...) plus "plan" (the printed lines) and "members".
    `train` is jobs.train.train, which trains each member as a normal run."""
    settings = dict(settings or {})
    check_settings(settings)
    started = time.monotonic()
    if resume is not None:
        out = resume
        state = json.loads((resume / AUTO_FILE).read_text(encoding="utf-8"))
        deadline = None  # members not started yet get their planned seconds
    else:
        seed = int(settings.get("seed", 1337))
        device = str(settings.get("device", "auto"))
        budget = float(settings.get("time_budget") or default_budget(options.input))
        summary = summarize(options, seed)
        kind = resolve_device(device).type
        plan = make_plan(summary, budget, kind, usable_cores())
        data = {key: getattr(options, key) for key in ("input", "val_file", "test_file", "split", "mode")}
        data |= {"max_item_len": options.max_item_len}
        if options.labelled or options.inputs or summary.labels:  # every member is a labelled run
            data |= {"input": options.inputs or options.input, "labelled": True, "label_mode": options.label_mode}
        state = {"plan": plan.to_json(), "data": data, "seed": seed, "device": device, "done": {}}
        deadline = started + budget - STARTUP_SECONDS
        out = out if out is not None else default_out(options.input)
    lines = describe_plan(Plan.from_json(state["plan"]))
    if dry_run:
        return {"run_dir": str(out), "plan": lines, "dry_run": True, "is_main": True, "stopped": "dry_run"}
    job = AutoJob(train, out, state, on_event, should_stop)
    if resume is None:
        run_dirs.check_free(out, force)
        out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        if resume is None:
            job.save_state()
        for line in lines:
            job.info(line)
        outcome = job.run(deadline)
    return finish(job, outcome, samples, time.monotonic() - started)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_out(input: str) -> Path:
    stem = input if input in BUILTIN_DATASETS else Path(input).stem
    return Path("runs") / f"{stem}-auto"


def finish(job: AutoJob, outcome: dict[str, Any], samples: int, elapsed: float) -> dict[str, Any]:
    """The result, in train()'s shape; the samples are drawn from the mix (and written to OUT/samples.txt)."""
    done = job.state["done"]
    members = [{"name": name, **done[name]} for name in job.names() if name in done]
    result: dict[str, Any] = {
        "run_dir": str(job.out), "model": "mix", "stopped": "interrupted" if outcome["interrupted"] else "plan",
        "step": outcome.get("step", 0), "max_steps": 0, "elapsed": elapsed, "best_val": None, "best_step": None,
        "val": None, "samples": None, "sample_text": None, "fitted": {}, "lr": None, "resumed_from": None,
        "message": None, "is_main": True, "members": members, "plan": describe_plan(job.plan),
    }  # fmt: skip
    if outcome["interrupted"] or not (job.out / ckpt.RUN_FILE).is_file():
        return result
    spec, mix = ckpt.load_model(job.out, torch.device("cpu"))
    mix = conditioned(mix, spec.data)  # a labelled mix samples from p(item) = sum_k p(k) p(item | k)
    result["val"] = dict(job.mixed["val"])
    result["best_val"] = result["val"]["nll"]
    seed = job.state["seed"]
    if samples and spec.data.get("mode") == "stream":
        text = "".join(stream_text(mix, spec.vocab, "", STREAM_SAMPLE_CHARS, DecodeOptions(), seed))
        ckpt.atomic_write(job.out / "samples.txt", (text + "\n").encode("utf-8"))
        result["sample_text"] = text
    elif samples:
        items = {name: ckpt.read_split_items(job.out, name) for name in ("train", "val", "test")}
        drawn = draw_items(mix, spec, items, samples, seed)
        ckpt.atomic_write(job.out / "samples.txt", "".join(item + "\n" for item in drawn).encode("utf-8"))
        train, held_out = set(items["train"]), set(items["val"]) | set(items["test"])
        result["samples"] = [{"item": item, "status": status(item, train, held_out)} for item in drawn]
    return result
