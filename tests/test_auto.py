"""`--model auto`: the plan rules as a pure function, and a tiny plan run end to end, stopped and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import run_cli

import makemore
from makemore.cli.info import format_info
from makemore.jobs import auto
from makemore.jobs.auto_plan import (
    MAX_ITEM_CONTEXT,
    MIN_MEMBER_SECONDS,
    RESERVE_SECONDS,
    DataSummary,
    Member,
    Plan,
    make_plan,
    ngram_reserve,
    wave_budget,
)
from makemore.models.transformer import TransformerConfig
from makemore.runs import checkpoint as ckpt
from makemore.training.schedule import TIME_SHARE

NAMES = DataSummary("line", 25_626, 182_000, 26, 6.1)
SMALL_NAMES = DataSummary("line", 4_130, 29_000, 26, 6.0)
PROSE = DataSummary("stream", 0, 1_000_000, 65, 0.0)
SENTENCES = DataSummary("line", 50_000, 3_000_000, 80, 60.0)
HUGE = DataSummary("line", 1_000_000, 8_000_000, 40, 7.0)
EMAILS = DataSummary("line", 24_000, 581_000, 39, 23.0)  # held-out e-mail addresses: 403k distinct states


@pytest.mark.parametrize("summary", [NAMES, SMALL_NAMES, PROSE, SENTENCES, HUGE])
@pytest.mark.parametrize("budget", [20.0, 120.0, 600.0, 1800.0, 7200.0])
@pytest.mark.parametrize("cores", [1, 2, 16])
def test_plan_fits_the_budget_and_is_a_pure_function(summary, budget, cores):
    plan = make_plan(summary, budget, "cpu", cores)
    assert plan.to_json() == make_plan(summary, budget, "cpu", cores).to_json()
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).to_json() == plan.to_json()
    waves = -(-len(plan.members) // plan.slots)  # members run in waves of `slots`
    # a member's schedule fits TIME_SHARE of its --time-budget: the waves' schedules fit the whole budget
    assert waves * TIME_SHARE * max((m.seconds for m in plan.members), default=0) < budget
    assert all(member.seconds >= MIN_MEMBER_SECONDS for member in plan.members)
    # members differ: another family, or the same family with another seed
    assert len({(member.model, member.repeat) for member in plan.members}) == len(plan.members)
    for k, member in enumerate(plan.members):
        assert member.repeat == sum(m.model == member.model for m in plan.members[:k])
    assert plan.slots <= max(cores, 1)


@pytest.mark.parametrize("seconds_left", [150.0, 528.0, 1800.0])
def test_the_last_wave_ends_within_the_deadline_and_earlier_waves_pass_time_on(seconds_left):
    end = 90.0  # the memories and the mix
    last = wave_budget(seconds_left, end, 1)
    # a member runs at most its budget (the trainer stops in time for its final evaluation), then its reserve
    assert last + RESERVE_SECONDS <= seconds_left - end
    for waves_left in (2, 3, 4):  # an earlier wave's members may train into their reserve, never past their share
        share = (seconds_left - end) / waves_left
        assert share - RESERVE_SECONDS < wave_budget(seconds_left, end, waves_left) <= max(share, 10.0)


def test_side_by_side_on_a_multicore_cpu_one_at_a_time_on_a_gpu():
    two = make_plan(NAMES, 600, "cpu", cores=2)
    assert two.slots == 2 and [m.model for m in two.members] == ["gru", "transformer"]
    assert all(m.seconds > 500 and m.settings["threads"] == 1 for m in two.members)  # each gets the whole time
    one = make_plan(NAMES, 600, "cpu", cores=1)
    assert one.slots == 1 and all(m.seconds < 300 for m in one.members)  # shared out
    assert make_plan(NAMES, 600, "cuda", cores=16).slots == 1


def test_recurrent_members_get_memories_where_the_budget_affords_them():
    plan = make_plan(NAMES, 1800, "cpu", 2)
    assert plan.memories and plan.remembered() == [m for m in plan.members if m.model in ("gru", "lstm")]
    assert make_plan(NAMES, 120, "cpu", 2).memories  # the default job: its GRU gets one
    assert make_plan(EMAILS, 600, "cpu", 2).memories  # ~46 s a memory: within 10 minutes, not within 2
    assert not make_plan(EMAILS, 120, "cpu", 2).memories and make_plan(EMAILS, 120, "cpu", 2).members
    for summary in (HUGE, PROSE, DataSummary("line", 25_626, 182_000, 26, 6.1, labels=2)):
        assert not make_plan(summary, 7200, "cpu", 2).memories
    for summary, budget in ((NAMES, 120), (NAMES, 1800), (EMAILS, 600)):
        plan = make_plan(summary, budget, "cpu", 2)
        waves = -(-len(plan.members) // plan.slots)
        longest = max(member.seconds for member in plan.members)
        # a member's schedule fits TIME_SHARE of its --time-budget; the memories are built after the last wave
        assert ngram_reserve(summary) + waves * TIME_SHARE * longest + plan.end_reserve() <= budget


def test_plan_grows_with_the_budget():
    counts = [len(make_plan(NAMES, budget).members) for budget in (20, 120, 600, 1800, 3600)]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] >= 3
    assert len(make_plan(NAMES, 600).members) == 2  # the measured pair: a GRU and a Transformer


def test_side_by_side_members_train_about_member_passes_then_more_waves():
    names = make_plan(NAMES, 1800, "cpu", cores=2)  # ~36 passes each: 4 waves of 2
    assert names.slots == 2 and len(names.members) == 8
    assert [m.model for m in names.members[:6]] == ["gru", "transformer", "lstm"] * 2
    assert [m.repeat for m in names.members[:6]] == [0, 0, 0, 1, 1, 1]
    assert all(400 < m.seconds < 460 for m in names.members)
    large = make_plan(HUGE, 1800, "cpu", cores=2)  # large data keeps learning: one wave, each member the whole time
    assert len(large.members) == 2 and all(m.seconds > 1200 for m in large.members)
    assert len(make_plan(NAMES, 600, "cpu", cores=2).members) == 2  # under two members' worth of passes: one wave
    four = make_plan(NAMES, 1800, "cpu", cores=4)  # 8 members fill 2 waves of 4, each member half the time
    assert four.slots == 4 and len(four.members) == 8 and all(800 < m.seconds < 900 for m in four.members)


def test_plan_picks_families_by_the_kind_of_data():
    assert make_plan(PROSE, 1800, "cuda").members[0].model == "transformer"
    assert make_plan(SENTENCES, 1800, "cuda").members[0].model == "transformer"
    prose = make_plan(PROSE, 600, "cpu", cores=2)  # prose: one member at a time, on every core
    assert [m.model for m in prose.members] == ["transformer"] and prose.slots == 1
    assert "threads" not in prose.members[0].settings and "row_shards" not in prose.members[0].settings
    assert [m.model for m in make_plan(PROSE, 1800, "cpu", cores=2).members] == ["transformer"]
    assert [m.model for m in make_plan(PROSE, 3700, "cpu", cores=2).members] == ["transformer", "gru"]
    assert make_plan(NAMES, 1800).members[0].model == "gru"
    assert {m.model for m in make_plan(NAMES, 600).members} == {"gru", "transformer"}


def test_plan_regularises_by_passes_over_the_data():
    few = make_plan(HUGE, 1800).members[0].settings  # under 3 passes: nothing overfits
    many = make_plan(SMALL_NAMES, 600).members[0].settings
    assert few.get("dropout") == 0.0 and "patience" not in few
    assert many.get("patience") and many.get("dropout", 0.3) > 0
    # names in 30 minutes (~36 passes a member): the family's own patience (a tight one stopped members at high lr)
    assert all("patience" not in m.settings for m in make_plan(NAMES, 1800, "cpu", cores=2).members)


def test_the_transformer_reads_the_longest_item_in_one_context():
    """Line mode: the Transformer's context holds the longest training item (and its start token), up to
    MAX_ITEM_CONTEXT: a longer item is read through a sliding window, the whole network again at every position
    past the context."""

    def context(summary: DataSummary) -> int:
        member = next(m for m in make_plan(summary, 600, "cpu", cores=2).members if m.model == "transformer")
        return member.settings.get("block_size", TransformerConfig().block_size)

    assert context(replace(NAMES, longest=15)) == TransformerConfig().block_size  # names: the registry's context
    assert context(replace(NAMES, longest=40)) == 41
    assert context(replace(NAMES, longest=5000)) == MAX_ITEM_CONTEXT


def test_the_plan_sees_the_longest_item(capsys, tmp_path):
    data = tmp_path / "items.txt"
    data.write_text("\n".join(["ab", "abc", "x" * 50] * 40) + "\n", encoding="utf-8")
    code, stdout, _ = run_cli(capsys, "train", "-i", data, "--dry-run", "--time-budget", 600, "--out", tmp_path / "r")
    assert code == 0 and "block_size=51" in stdout, stdout


def tiny_plan(summary: DataSummary, budget: float, device: str = "cpu", cores: int = 1, slots: int = 1) -> Plan:
    """Two tiny neural members that stop by steps, so the test takes seconds and does not depend on speed."""
    tiny = {"max_steps": 30, "eval_every": 10, "batch_size": 16, "n_embd": 8}
    members = [
        Member("2-gru", "gru", 30.0, {**tiny, "n_hidden": 16, "n_layer": 1}),
        Member("3-transformer", "transformer", 30.0, {**tiny, "n_layer": 1, "n_head": 2, "row_shards": 1}),
    ]
    return Plan(budget, device, summary, members, ["tiny"], slots)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(auto, "make_plan", tiny_plan)


def test_dry_run_prints_the_plan_and_trains_nothing(capsys, names_file, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "-i", names_file, "--dry-run", "--time-budget", 600, "--out", out)
    assert code == 0
    assert "auto plan for 600 s" in stdout and "2-gru" in stdout and "3-transformer" in stdout
    assert not out.exists()


def test_auto_refuses_settings_it_chooses(capsys, names_file, tmp_path):
    code, _, err = run_cli(capsys, "train", "-i", names_file, "--lr", "0.1", "--out", tmp_path / "r")
    assert code == 2 and "--lr" in err and err.count("\n") == 1


def test_tiny_plan_end_to_end(tiny, names_file, tmp_path):
    out = tmp_path / "auto"
    events = []
    result = makemore.train(names_file, model="auto", out=out, samples=5, on_event=events.append)
    assert result["stopped"] == "plan"
    assert [m["name"] for m in result["members"]] == ["1-ngram", "2-gru", "3-transformer"]
    weights = [m["weight"] for m in result["members"]]
    assert all(w >= 0 for w in weights)
    assert result["val"]["nll"] <= min(m["val_nll"] for m in result["members"]) + 1e-6  # the mix is no worse
    run = makemore.load(out)
    assert run.model_name == "mix"
    combine = ckpt.read_run_spec(out).model_config.combine  # the better of the two on val
    assert combine == "log-linear" or abs(sum(weights) - 1) < 1e-6
    assert len(run.generate(5, seed=1).items) == 5
    assert abs(run.evaluate("val")["val"]["nll"] - result["val"]["nll"]) < 1e-5
    info = makemore.describe_run(out)
    assert [m["name"] for m in info["auto"]["members"]] == ["1-ngram", "2-gru", "3-transformer"]
    assert any(e.get("member") == "2-gru" for e in events)  # members report through the same events
    shown = format_info(info)
    assert "--model auto: 3 of 3 planned members" in shown and "3-transformer" in shown


def memory_plan(summary: DataSummary, budget: float, device: str = "cpu", cores: int = 1) -> Plan:
    """The tiny plan, its GRU given a memory of its training states."""
    return replace(tiny_plan(summary, budget), memories=True)


def test_a_recurrent_member_is_mixed_as_its_memory(monkeypatch, names_file, tmp_path):
    monkeypatch.setattr(auto, "make_plan", memory_plan)
    out = tmp_path / "auto"
    result = makemore.train(names_file, model="auto", out=out, samples=0)
    members = {m["name"]: m for m in result["members"]}
    assert list(members) == ["1-ngram", "2-gru", "3-transformer", "2-gru-knn"]
    assert "weight" in members["2-gru-knn"] and "weight" not in members["2-gru"]  # the GRU is mixed as its memory
    assert ckpt.read_run_spec(out / "parts" / "2-gru-knn").model_name == "knn"
    assert members["2-gru-knn"]["val_nll"] <= members["2-gru"]["val_nll"] + 1e-6  # lam 0 is among its settings
    assert members["2-gru"]["val_nll"] == pytest.approx(_run_val(out / "parts" / "2-gru"), abs=1e-5)
    run = makemore.load(out)
    assert len(run.generate(3, seed=1).items) == 3
    assert abs(run.evaluate("val")["val"]["nll"] - result["val"]["nll"]) < 1e-5
    shown = format_info(makemore.describe_run(out))
    assert "--model auto: 4 of 4 planned members" in shown and "mixed as 2-gru-knn" in shown


def test_a_plan_with_memories_resumes_like_an_uninterrupted_one(monkeypatch, names_file, tmp_path):
    monkeypatch.setattr(auto, "make_plan", memory_plan)
    straight = makemore.train(names_file, model="auto", out=tmp_path / "straight", samples=0)
    out, calls = tmp_path / "stopped", []

    def stop_in_the_last_member():
        calls.append(1)
        return len(calls) > 35

    first = makemore.train(names_file, model="auto", out=out, samples=0, should_stop=stop_in_the_last_member)
    assert first["stopped"] == "interrupted" and [m["name"] for m in first["members"]] == ["1-ngram", "2-gru"]
    resumed = makemore.train(resume=out, samples=0)
    assert resumed["stopped"] == "plan" and "2-gru-knn" in [m["name"] for m in resumed["members"]]
    assert resumed["val"]["nll"] == straight["val"]["nll"]


def _run_val(run_dir: Path) -> float:
    return makemore.load(run_dir).evaluate("val")["val"]["nll"]


def repeat_plan(summary: DataSummary, budget: float, device: str = "cpu", cores: int = 1) -> Plan:
    """The tiny plan's GRU, then the GRU again with the next seed."""
    plan = tiny_plan(summary, budget)
    first = plan.members[0]
    plan.members[1] = Member("3-gru", "gru", first.seconds, dict(first.settings), "again", repeat=1)
    return plan


def test_a_member_repeating_a_family_trains_another_seed_on_the_same_split(monkeypatch, names_file, tmp_path):
    monkeypatch.setattr(auto, "make_plan", repeat_plan)
    out = tmp_path / "auto"
    result = makemore.train(names_file, model="auto", out=out, samples=3, seed=5)
    assert [m["name"] for m in result["members"]] == ["1-ngram", "2-gru", "3-gru"]
    first, again = makemore.load(out / "parts" / "2-gru"), makemore.load(out / "parts" / "3-gru")
    for split in ("train", "val", "test"):
        assert sorted(ckpt.read_split_items(out / "parts" / "3-gru", split)) == sorted(
            ckpt.read_split_items(out / "parts" / "1-ngram", split)
        )
    assert ckpt.read_json(out / "parts" / "3-gru" / "run.json")["train_config"]["seed"] == 6  # seed + repeat
    assert first.evaluate("val")["val"]["nll"] != again.evaluate("val")["val"]["nll"]  # another initialisation
    assert len(makemore.load(out).generate(3, seed=1).items) == 3


def test_labelled_data_makes_a_labelled_mix(monkeypatch, tmp_path):
    monkeypatch.setattr(auto, "make_plan", repeat_plan)
    rows = [("a", name + "a") for name in ("ann", "bell", "cor", "dor", "em", "fay", "gin", "hop", "ivy", "jo")]
    rows += [("b", name + "b") for name in ("al", "bo", "cy", "dan", "ed", "fox", "gus", "hal", "ike", "jim")]
    data = tmp_path / "by-label.tsv"
    data.write_text("".join(f"{label}\t{item}\n" for label, item in rows * 3), encoding="utf-8")
    out = tmp_path / "auto"
    result = makemore.train(str(data), model="auto", labelled=True, out=out, samples=3)
    assert [m["name"] for m in result["members"]] == ["1-ngram", "2-gru", "3-gru"]
    assert len(result["samples"]) == 3
    for split in ("train", "val", "test"):  # the repeat read the n-gram's split, labels and all
        for suffix in ("", ".labels"):
            again = ckpt.read_split_items(out / "parts" / "3-gru", split + suffix)
            assert sorted(again) == sorted(ckpt.read_split_items(out / "parts" / "1-ngram", split + suffix))
    info = makemore.describe_run(out)
    assert info["data"]["labels"] == ["a", "b"]  # every member, and so the mix, is conditioned on the label
    run = makemore.load(out)
    drawn = [g["item"] for g in run.generate(20, seed=1, label="b").items]
    assert sum(item.endswith("b") for item in drawn) >= 15, drawn  # label b's items all end in b


def test_the_ngram_run_is_usable_before_the_neural_members(tiny, names_file, tmp_path):
    out = tmp_path / "auto"
    seen = []

    def stop_in_first_neural_member():
        if (out / "run.json").is_file() and not seen:
            seen.append(makemore.load(out).generate(3, seed=0).items)  # the n-gram's mix is already a run
        return bool(seen)

    result = makemore.train(names_file, model="auto", out=out, should_stop=stop_in_first_neural_member)
    assert result["stopped"] == "interrupted" and len(seen[0]) == 3
    assert [m["name"] for m in result["members"]] == ["1-ngram"]


def test_resume_inside_and_between_members_ends_like_an_uninterrupted_plan(tiny, names_file, tmp_path):
    straight = makemore.train(names_file, model="auto", out=tmp_path / "straight", samples=0)
    out = tmp_path / "stopped"
    calls = []

    def stop_after(n):
        def should_stop():
            calls.append(1)
            return len(calls) > n

        return should_stop

    first = makemore.train(names_file, model="auto", out=out, samples=0, should_stop=stop_after(12))
    assert first["stopped"] == "interrupted"  # inside 2-gru
    ngram_weights = (out / "parts" / "1-ngram" / "model.safetensors").stat().st_mtime_ns
    calls.clear()
    second = makemore.train(resume=out, samples=0, should_stop=stop_after(35))
    assert second["stopped"] == "interrupted"  # inside 3-transformer
    resumed = makemore.train(resume=out, samples=0)
    assert resumed["stopped"] == "plan"
    assert (out / "parts" / "1-ngram" / "model.safetensors").stat().st_mtime_ns == ngram_weights  # kept
    assert resumed["val"]["nll"] == straight["val"]["nll"]  # each member resumed exactly
    assert [m["val_nll"] for m in resumed["members"]] == [m["val_nll"] for m in straight["members"]]


@pytest.mark.slow  # six spawned processes, each importing torch
def test_side_by_side_members_stop_and_resume_exactly(monkeypatch, names_file, tmp_path):
    """Members in their own processes compute what they compute one after another, stop when asked (each saving
    its checkpoint) and resume exactly."""
    monkeypatch.setattr(auto, "make_plan", tiny_plan)
    straight = makemore.train(names_file, model="auto", out=tmp_path / "straight", samples=0)
    monkeypatch.setattr(auto, "make_plan", lambda *args: tiny_plan(*args[:3], slots=2))
    together = makemore.train(names_file, model="auto", out=tmp_path / "together", samples=0)
    assert [m["val_nll"] for m in together["members"]] == [m["val_nll"] for m in straight["members"]]
    out, seen = tmp_path / "stopped", []

    def on_event(event):
        if "step 10," in event.get("message", ""):  # a member's first evaluation (eval_every 10)
            seen.append(event)

    first = makemore.train(
        names_file, model="auto", out=out, samples=0, on_event=on_event, should_stop=lambda: bool(seen)
    )
    assert first["stopped"] == "interrupted" and seen
    assert [m["name"] for m in first["members"]] == ["1-ngram"]
    resumed = makemore.train(resume=out, samples=0)
    assert [m["val_nll"] for m in resumed["members"]] == [m["val_nll"] for m in straight["members"]]
    assert resumed["val"]["nll"] == straight["val"]["nll"]


def test_resume_refuses_new_settings(tiny, names_file, tmp_path, capsys):
    out = tmp_path / "auto"
    makemore.train(names_file, model="auto", out=out, samples=0)
    code, _, err = run_cli(capsys, "train", "--resume", out, "--time-budget", 5)
    assert code == 2 and "keeps its plan" in err


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_completes(names_file, tmp_path):
    """A real `makemore train --model auto` killed at several moments, resumed each time, ends as a usable run."""
    out = tmp_path / "auto"
    command = [sys.executable, "-m", "makemore", "train", "-i", str(names_file), "--out", str(out)]
    command += ["--time-budget", "70", "--samples", "0"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "auto.json").exists() and time.monotonic() < deadline:  # before it, nothing to resume
        time.sleep(0.1)
    for delay in (0.5, 6.0, 4.0):  # inside the n-gram or the first members' start, then inside their training
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        resume = [sys.executable, "-m", "makemore", "train", "--resume", str(out), "--samples", "0"]
        process = subprocess.Popen(resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    run = makemore.load(out)
    assert run.model_name == "mix" and len(run.generate(3, seed=0).items) == 3
    state = json.loads((out / "auto.json").read_text())
    assert set(state["done"]) == {"1-ngram", *(m["name"] for m in state["plan"]["members"])}


def test_auto_is_the_default_model(capsys, tmp_path, names_file):
    code, stdout, _ = run_cli(capsys, "train", "-i", names_file, "--dry-run")
    assert code == 0 and stdout.startswith("auto plan for 600 s")
    code, stdout, _ = run_cli(capsys, "train", "--dry-run")
    assert code == 0 and stdout.startswith("auto plan for 120 s")
    assert Path(names_file).exists()
