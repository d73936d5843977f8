"""The learning-rate schedule, a function of the step alone, and how a time budget becomes a number of steps.

A time budget decides when a run stops, never what a step computes: after a short timed start (`PROBE_STEPS`, or
the warmup if shorter) the budget is turned once into a step count, the schedule's length from then on. The same
run with `--max-steps` set to that count computes the same learning rate at every step. The budget holds the run's
final evaluation too: training stops one timed evaluation before it (`Horizon.out_of_time`).
"""

from __future__ import annotations

import math

from makemore.training.config import TrainConfig

# A time budget becomes a step count at the end of warmup (the first step whose learning rate depends on the
# schedule's length), timed over the whole warmup for a steadier estimate, but at most this many steps in.
PROBE_STEPS = 500
UNTIMED_STEPS = 2  # the first steps pay for lazy initialisation (thread pools, allocations): not timed
# The schedule is fitted into this share of the time left: a run whose speed drifts down (a busier machine, longer
# late batches) should still reach the end of its schedule, where the learning rate has decayed, before the clock
# stops it.
TIME_SHARE = 0.95


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """1) linear warmup; 2) then cosine to min_lr_ratio * lr, a step drop, or constant. progress in [0, 1]."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.lr * ratio
    if config.schedule == "step" and progress >= config.step_decay_at:
        return config.lr * config.min_lr_ratio
    return config.lr


def lr_of_step(config: TrainConfig, step: int, schedule_steps: int) -> float:
    """The learning rate of `step` in a schedule `schedule_steps` long."""
    return lr_at(config, step, step / max(schedule_steps, 1))


def probe_steps(config: TrainConfig) -> int:
    """After how many steps a time budget becomes a step count: before the first step whose learning rate depends
    on the schedule's length (the first after warmup; progress 0 at step 0 gives the peak whatever the length)."""
    return max(1, min(PROBE_STEPS, config.warmup_steps))


class Horizon:
    """Fixes the schedule's length once: max_steps, or with a time budget min(max_steps, the steps that fit).

    `seconds_at(step, elapsed)` is told the (rank-agreed) training clock before every step; `steps` is 0 until fixed.
    `steps`: the length a resumed run had fixed (0: none yet); `final_seconds`: the evaluation it had timed.
    """

    def __init__(self, config: TrainConfig, steps: int = 0, final_seconds: float = 0.0):
        self.config = config
        # without a budget the length is max_steps (a resumed run may have been given more); with one, the estimate
        # a resumed run had fixed, within the (possibly new) max_steps
        self.steps = config.max_steps if config.time_budget is None else min(steps, config.max_steps)
        self.probe = probe_steps(config)
        self.timed_from: tuple[int, float] | None = None  # (step, clock) where timing started
        # what else each step costs over the run: evaluation every eval_every steps (timed once by the trainer)
        self.extra_per_step = 0.0
        self.untimed_seconds = 0.0  # clock time since timing started that was not spent on steps (that evaluation)
        self.final_seconds = final_seconds  # kept free at the end of the budget for the final evaluation
        self.from_checkpoint = False  # the length comes from the checkpoint's steps and seconds, not from timing

    def fixes_at(self, step: int) -> bool:
        """Whether the length gets fixed by timing before this step (the trainer times an evaluation first)."""
        return not self.steps and self.timed_from is not None and not self.from_checkpoint and step >= self.probe

    def timed_evaluation(self, seconds: float, eval_every: int) -> None:
        """One evaluation took `seconds` just before the length is fixed: it costs `seconds / eval_every` per step
        from now on, and the clock's reading includes it once, which is not the steps' own speed."""
        self.extra_per_step = seconds / max(eval_every, 1)
        self.untimed_seconds += seconds
        self.final_seconds = seconds

    def seconds_at(self, step: int, elapsed: float) -> None:
        if self.steps:
            return
        if self.timed_from is None and step >= self.probe:
            # a run resumed past its timed start with new limits: its own average speed so far (evaluations
            # included), read from the checkpoint, fixes the new length at once; no timing of this process
            self.timed_from, self.from_checkpoint = (0, 0.0), True
        if self.timed_from is None and step >= min(UNTIMED_STEPS, self.probe - 1):
            self.timed_from = (step, elapsed)
        if step >= self.probe and self.timed_from is not None:
            self.steps = self.estimate(step, elapsed)

    def estimate(self, step: int, elapsed: float) -> int:
        """Steps done + the steps that fit in the time left at the timed speed (evaluations included, and the
        final evaluation kept free), at most max_steps."""
        first, started = self.timed_from or (0, 0.0)
        per_step = max(elapsed - started - self.untimed_seconds, 0.0) / max(step - first, 1) + self.extra_per_step
        budget = self.config.time_budget or math.inf
        remaining = TIME_SHARE * (budget - elapsed - self.final_seconds) / per_step if per_step > 0 else math.inf
        fit = step + max(0, math.floor(remaining)) if math.isfinite(remaining) else self.config.max_steps
        return max(step, 1, min(self.config.max_steps, fit))

    def out_of_time(self, elapsed: float, step_seconds: float = 0.0) -> bool:
        """Whether training must stop after `elapsed` seconds: one more step (as long as the last, `step_seconds`)
        and then the final evaluation (`final_seconds` when timed) would end past the budget."""
        budget = self.config.time_budget
        return budget is not None and (elapsed >= budget or elapsed + step_seconds + self.final_seconds > budget)

    def lr(self, step: int) -> float:
        """This step's learning rate; before the length is fixed (the timed start) only the length-free part runs."""
        return lr_of_step(self.config, step, self.steps or self.config.max_steps)
