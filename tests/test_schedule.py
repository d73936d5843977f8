"""The learning rate is a function of the step: a time budget becomes a step count once, after a timed start, is
recorded, survives a resume, and `--max-steps` set to that count repeats the run exactly. Plus TrainConfig's checks,
which name flags."""

from __future__ import annotations

import json
import types

import pytest
import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.training import schedule
from makemore.training import trainer as trainer_module
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

CLOCK = [0.0]  # a fake clock: every batch drawn takes one second


@pytest.fixture
def fake_clock(monkeypatch):
    CLOCK[0] = 0.0
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: CLOCK[0]))
    monkeypatch.setattr(schedule, "TIME_SHARE", 1.0)  # the whole time left: round numbers below


def make_trainer(run_dir, items, stop_at: int | None = None, **settings) -> Trainer:
    vocab = Vocab.from_texts(items)
    torch.manual_seed(0)
    model = build_model("mlp", MODELS["mlp"].config_class(n_embd=4, n_hidden=16, dropout=0.2), vocab.size)
    splits = {name: LineSplit(items, vocab) for name in ("train", "val")}
    options = dict(batch_size=8, eval_every=10, log_every=1, warmup_steps=10, device="cpu", threads=1) | settings
    run_dir.mkdir(exist_ok=True)
    trainer = Trainer(model, splits, TrainConfig(**options), run_dir)
    if stop_at is not None:
        trainer.should_stop = lambda: trainer.state.step == stop_at
    draw = trainer.sampler.next

    def one_second_per_batch():
        CLOCK[0] += 1.0
        return draw()

    trainer.sampler.next = one_second_per_batch
    return trainer


def lrs(run_dir) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["lr"]) for line in lines if line["event"] == "train"]


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_the_schedule_is_max_steps_long_without_a_budget():
    horizon = schedule.Horizon(TrainConfig(max_steps=300, warmup_steps=0))
    horizon.seconds_at(0, 0.0)
    assert horizon.steps == 300
    assert horizon.lr(150) == schedule.lr_of_step(horizon.config, 150, 300)


def test_the_budget_becomes_a_step_count_after_the_warmup_or_probe():
    config = TrainConfig(max_steps=10_000, time_budget=1000.0, warmup_steps=200)
    horizon = schedule.Horizon(config)
    for step in range(200):  # two seconds a step (the first steps are not timed), through the warmup
        horizon.seconds_at(step, 5.0 + 2.0 * step)
        assert horizon.steps == 0
    horizon.seconds_at(200, 5.0 + 2.0 * 200)
    # the steps done, then two seconds a step for the share of the time left that the schedule takes
    assert horizon.steps == 200 + int(schedule.TIME_SHARE * (1000 - 405) / 2)
    capped = schedule.Horizon(TrainConfig(max_steps=10_000, time_budget=1000.0, warmup_steps=2000))
    assert capped.probe == schedule.PROBE_STEPS  # a long warmup: fixed part-way through it
    short = schedule.Horizon(TrainConfig(max_steps=10_000, time_budget=100.0, warmup_steps=4))
    for step in range(4):
        short.seconds_at(step, float(step))
    assert short.fixes_at(4)  # the trainer times an evaluation here: 0.5 s, for an evaluation every 10 steps
    short.timed_evaluation(0.5, 10)
    short.seconds_at(4, 4.5)  # the clock now includes the evaluation, which is not the steps' own speed
    # the steps take 1 s each ((4.5 - 0.5 - 1.0) s over steps 1-4 is 1 s a step), plus 0.05 s of evaluation each,
    # in the time left less one final evaluation
    assert short.steps == 4 + int(schedule.TIME_SHARE * (95.5 - 0.5) / 1.05)  # fixed by the end of warmup
    # training stops where one more step and the final evaluation would end past the budget
    assert not short.out_of_time(99.5) and short.out_of_time(99.6) and short.out_of_time(99.0, step_seconds=0.6)


def test_a_budgeted_run_equals_max_steps_of_its_recorded_length(tmp_path, names_file, fake_clock):
    items = names_file.read_text().split()
    budgeted = make_trainer(tmp_path / "budget", items, max_steps=1000, time_budget=30.0)
    result = budgeted.train()
    # ten steps timed at one second each, then 20 more seconds: a 30-step schedule, recorded and logged
    assert result["schedule_steps"] == 30 and result["step"] == 30
    assert lrs(tmp_path / "budget")[-1][0] == 30
    assert json.loads((tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()[-2])["max_steps"] == 30
    fixed = make_trainer(tmp_path / "fixed", items, max_steps=30)
    fixed.train()
    assert lrs(tmp_path / "budget") == lrs(tmp_path / "fixed")
    assert all(torch.equal(a, b) for a, b in zip(weights(budgeted).values(), weights(fixed).values()))


def test_a_resumed_budgeted_run_continues_the_same_schedule(tmp_path, names_file, fake_clock):
    items = names_file.read_text().split()
    straight = make_trainer(tmp_path / "a", items, max_steps=1000, time_budget=30.0)
    straight.train()
    stopped = make_trainer(tmp_path / "b", items, stop_at=17, max_steps=1000, time_budget=30.0)
    assert stopped.train()["stopped"] == "interrupted"
    CLOCK[0] += 1000.0  # the pause between the two processes is not training time
    resumed = make_trainer(tmp_path / "b", items, max_steps=1000, time_budget=30.0)
    assert resumed.restore() and resumed.state.schedule_steps == 30
    resumed.train()
    assert lrs(tmp_path / "a") == lrs(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(weights(straight).values(), weights(resumed).values()))


def test_the_clock_stops_a_run_early_without_touching_its_steps(tmp_path, names_file, fake_clock):
    items = names_file.read_text().split()
    run = make_trainer(tmp_path / "slow", items, max_steps=1000, time_budget=30.0)
    draw = run.sampler.next

    def slower_after_the_probe():  # the machine gets busy once the length is fixed
        CLOCK[0] += 2.0 if run.state.step >= 10 else 0.0
        return draw()

    run.sampler.next = slower_after_the_probe
    result = run.train()
    assert result["stopped"] == "time_budget" and result["schedule_steps"] == 30 and result["step"] < 30
    expected = [(step, schedule.lr_of_step(run.config, step - 1, 30)) for step in range(1, result["step"] + 1)]
    assert lrs(tmp_path / "slow") == expected


def test_a_run_stopped_by_the_clock_ends_its_final_evaluation_within_the_budget(tmp_path, names_file, fake_clock):
    items = names_file.read_text().split()
    run = make_trainer(tmp_path / "slow", items, max_steps=1000, time_budget=60.0)
    draw, evaluate = run.sampler.next, run.evaluate

    def slower_after_the_probe():  # the machine gets busy once the length is fixed
        CLOCK[0] += 2.0 if run.state.step >= 10 else 0.0
        return draw()

    def three_second_evaluation(split):
        CLOCK[0] += 3.0
        return evaluate(split)

    run.sampler.next, run.evaluate = slower_after_the_probe, three_second_evaluation
    result = run.train()
    assert result["stopped"] == "time_budget" and result["step"] < result["schedule_steps"]
    assert result["final_eval_seconds"] == 3.0
    assert 57.0 <= CLOCK[0] <= 60.0  # the last evaluation started at least 3 s before the budget, and ended in it


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_steps": 0}, "--max-steps must be >= 1, got 0"),
        ({"lr": -1.0}, "--lr must be > 0, got -1.0"),
        ({"row_shards": 0}, "--row-shards must be in 1..256, got 0"),
        ({"eval_every": 0}, "--eval-every must be >= 1, got 0"),
        ({"threads": -1}, "--threads must be in 0..1024, got -1"),
    ],
)
def test_config_errors_name_the_flag(settings, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**settings)
    assert str(error.value) == message


def test_max_steps_zero_is_a_one_line_cli_error(capsys, tmp_path, names_file):
    from makemore.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-i", str(names_file), "-o", str(tmp_path / "run"), "--max-steps", "0", "--model", "mlp"])
    assert exit_info.value.code == 2
    assert "--max-steps must be >= 1, got 0" in capsys.readouterr().err


def test_the_fixed_schedule_is_told_once_with_the_flags_that_repeat_it(tmp_path, names_file, fake_clock):
    events = []
    trainer = make_trainer(tmp_path / "budget", names_file.read_text().split(), max_steps=1000, time_budget=30.0)
    trainer.on_event = events.append
    trainer.train()
    told = [event["message"] for event in events if event["event"] == "info"]
    assert told == ["schedule: 30 steps fit the 30 s budget (fixed now; --max-steps 30 --time-budget none repeats "
                    "this run)"]  # fmt: skip


def test_a_resume_with_new_limits_fixes_the_length_from_the_runs_own_speed(tmp_path, names_file, fake_clock):
    items = names_file.read_text().split()
    stopped = make_trainer(tmp_path / "run", items, stop_at=17, max_steps=1000, time_budget=30.0)
    assert stopped.train()["stopped"] == "interrupted"  # 17 steps in 17 s, a 30-step schedule
    CLOCK[0] += 1000.0  # the pause between the two processes is not training time
    resumed = make_trainer(tmp_path / "run", items, max_steps=1000, time_budget=40.0)
    assert resumed.restore()
    resumed.state.schedule_steps = 0  # what `makemore train --resume RUN --time-budget 40` does: new limits
    result = resumed.train()
    assert result["schedule_steps"] == 17 + 23  # one second a step so far, 23 s left: not the 1,000-step limit
