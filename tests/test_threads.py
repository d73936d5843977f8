"""ThreadChooser (--threads 0): one thread while the cores are busy, otherwise whichever the clock prefers."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest
import torch

from makemore.training import trainer as train
from makemore.training.trainer import ThreadChooser

CLOCK = [0.0]  # a fake clock: steps take exactly as long as the test says


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: CLOCK[0]))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def run(chooser: ThreadChooser, steps: int, slow_threads: int, start: int = 0) -> list[int]:
    used = []
    for step in range(start, start + steps):
        chooser.before_step(step)
        used.append(torch.get_num_threads())
        CLOCK[0] += 4.0 if torch.get_num_threads() == slow_threads else 1.0
        chooser.after_step(step)
    return used


@pytest.mark.parametrize("slow_threads, expected", [(2, 1), (1, 2)])
def test_keeps_the_faster_choice(two_cores, monkeypatch, slow_threads, expected):
    chooser = ThreadChooser(True, probe=3, every=50)
    monkeypatch.setattr(chooser, "busy", lambda: False)
    used = run(chooser, 20, slow_threads)
    assert used[:3] == [1, 1, 1] and used[3] == 2  # the trial: one thread, then both cores
    assert used[-1] == expected and chooser.chosen == expected


def test_stops_a_losing_trial_early_and_backs_off(two_cores, monkeypatch):
    chooser = ThreadChooser(True, probe=3, every=10)
    monkeypatch.setattr(chooser, "busy", lambda: False)
    used = run(chooser, 12, slow_threads=2)
    assert used[:5] == [1, 1, 1, 2, 2] and used[5] == 1  # two cores fell behind after one timed step
    assert chooser.wait == 20 and chooser.next_trial == 4 + 20  # one thread again: look again twice as late
    assert run(chooser, 30, slow_threads=2, start=12)[24 - 12 : 24 - 12 + 5] == [1, 1, 1, 2, 2]
    assert chooser.wait == 40


def test_busy_machine_means_one_thread_without_a_trial(two_cores, monkeypatch):
    chooser = ThreadChooser(True, probe=3)
    monkeypatch.setattr(chooser, "busy", lambda: True)
    assert run(chooser, 10, slow_threads=1) == [1] * 10


@pytest.mark.parametrize(
    "load, chosen, busy", [(1.2, 1, False), (1.8, 1, True), (2.1, 2, False), (2.8, 2, True), (0.3, 1, False)]
)
def test_busy_counts_only_other_processes(monkeypatch, load, chosen, busy):
    """The load average includes this process: about one per thread it uses (two while on two threads)."""
    monkeypatch.setattr(train.os, "getloadavg", lambda: (load, load, load))
    chooser = ThreadChooser(False)
    chooser.meter.available = False  # no /proc/stat: the load average decides
    chooser.chosen = chosen
    assert chooser.busy() == busy


@pytest.mark.parametrize(
    "seconds, all_busy, own, busy",
    [(2.0, 1.0, 0.9, False), (2.0, 3.0, 1.9, True), (2.0, 4.0, 3.9, False), (0.2, 9, 0, False)],
)
def test_busy_from_proc_stat_counts_only_other_processes(monkeypatch, seconds, all_busy, own, busy):
    """CPU time of all processes (/proc/stat) less this process's, per second since the last look; an interval too
    short to tell counts as not busy (the timed trial decides)."""
    chooser = ThreadChooser(False)
    chooser.meter.available = True
    chooser.meter.last = (100.0, 50.0, 20.0)
    monkeypatch.setattr(chooser.meter, "sample", lambda: (100.0 + seconds, 50.0 + all_busy, 20.0 + own))
    assert chooser.busy() == busy


def test_other_load_sees_a_busy_process():
    meter = train.OtherLoad()
    if not meter.available:
        pytest.skip("no /proc/stat here")
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"]
    )
    try:
        time.sleep(1.2)
        others = meter.others()
    finally:
        stranger.wait()
    assert others is not None and others > 0.5


def test_disabled_leaves_threads_alone(two_cores):
    chooser = ThreadChooser(False)
    assert run(chooser, 5, slow_threads=1) == [2] * 5


@pytest.mark.parametrize("fastest", [(2, True), (2, False), (1, False)])
def test_with_row_splitting_three_candidates_and_the_fastest_stays(two_cores, monkeypatch, fastest):
    """One thread, both cores inside each op, both cores as shards of rows: timed in that order, the fastest kept."""
    chooser = ThreadChooser(True, probe=3, every=50, split=True)
    monkeypatch.setattr(chooser, "busy", lambda: False)
    used = []
    for step in range(20):
        chooser.before_step(step)
        mode = (chooser.active, chooser.splitting)
        used.append(mode)
        CLOCK[0] += 1.0 if mode == fastest else 3.0
        chooser.after_step(step)
    assert used[:4] == [(1, False)] * 3 + [(2, False)]  # the trial: one thread, then both cores in each op, ...
    assert (2, True) in used[4:9]  # ... then both cores as shards (unless already behind)
    assert used[-1] == fastest and torch.get_num_threads() == (1 if fastest[1] else fastest[0])
