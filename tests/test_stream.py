"""Stream mode: windows, samplers, carried state, evaluation with full context, mode detection, the CLI paths."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import makemore.cli as cli
from makemore.data.corpus import detect_mode, read_corpus, split_offsets
from makemore.data.lines import BOUNDARY, IGNORE
from makemore.data.stream import (
    EvalPlan,
    SequentialSampler,
    StreamSplit,
    WindowSampler,
    flatten_state,
    plan_eval,
    unflatten_state,
)
from makemore.errors import MakemoreError
from makemore.models import MODELS, LanguageModel, build_model
from makemore.models.base import sequence_nll
from makemore.training.config import TrainConfig
from makemore.training.evaluation import evaluate
from makemore.training.trainer import Trainer

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom,\n"
    "it was the age of foolishness, it was the epoch of belief.\n\n"
    "There were a king with a large jaw and a queen with a plain face, on the throne of England.\n\n"
)


@pytest.fixture(autouse=True)
def _one_thread():
    # the machine's cores are shared: one thread keeps these tiny models fast and the timings stable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def prose_file(tmp_path: Path) -> Path:
    path = tmp_path / "prose.txt"
    path.write_text(PROSE * 12, encoding="utf-8")
    return path


def positions_split(n: int, begin: int, end: int, window: int, **kwargs) -> StreamSplit:
    """A split over ids = 0..n, so every id is its own position: windows can be checked by arithmetic."""
    return StreamSplit(np.arange(n + 1, dtype=np.int64), begin, end, window, **kwargs)


# ------------------------------------------------------------------------------------------------- corpus, splits


def test_corpus_ids_start_with_boundary_and_round_trip(prose_file: Path):
    corpus = read_corpus(prose_file)
    text = prose_file.read_text(encoding="utf-8")
    assert corpus.ids.dtype == np.uint8 and corpus.ids[0] == BOUNDARY
    assert corpus.vocab.decode(corpus.ids[1:].tolist()) == text
    mapped = read_corpus(prose_file, memmap_above=0)  # forced onto a memory-mapped temporary file
    assert isinstance(mapped.ids, np.memmap) and np.array_equal(np.asarray(mapped.ids), corpus.ids)


def test_wide_vocabularies_use_uint16(tmp_path: Path):
    path = tmp_path / "wide.txt"
    text = "".join(chr(0x4E00 + i) for i in range(300)) + " ok\n"
    path.write_text(text, encoding="utf-8")
    corpus = read_corpus(path)
    assert corpus.ids.dtype == np.uint16
    assert corpus.vocab.decode(corpus.ids[1:].tolist()) == text


def test_split_is_contiguous_with_val_last_and_test_before_it():
    offsets = split_offsets(1000, (0.8, 0.1, 0.1), dev=0.05)
    assert offsets == {"dev": [1, 51], "train": [51, 801], "test": [801, 901], "val": [901, 1001]}
    assert split_offsets(1115394, (0.9, 0.1, 0.0))["val"] == [1003855, 1115395]  # nanoGPT: data[int(0.9 n):]


# ----------------------------------------------------------------------------------------------------- samplers


def test_random_windows_line_up_and_stay_inside_the_split():
    split = positions_split(500, begin=101, end=301, window=16)
    sampler = WindowSampler(split, batch_size=64, window=16, seed=0)
    for _ in range(20):
        x, y = sampler.next()
        assert x.shape == y.shape == (64, 16)
        assert torch.equal(y, x + 1)  # target = input shifted by one, inside the window and at its edges
        assert int(y.min()) >= 101 and int(y.max()) <= 300  # every target is a position of the split
    # the extreme windows: the first reads the char before the split, the last ends on its last char
    x, y = split.windows(np.array([sampler.low, sampler.high]), 16)
    assert int(y[0, 0]) == 101 and int(y[1, -1]) == 300 and int(x[0, 0]) == 100


def test_random_windows_resume_exactly():
    split = positions_split(500, 1, 451, 8)
    a = WindowSampler(split, 4, 8, seed=3)
    a.next()
    b = WindowSampler(split, 4, 8, seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next()[0], b.next()[0])


def test_sequential_streams_continue_across_batches_and_reset_at_epochs():
    split = positions_split(400, 1, 401, window=10)
    sampler = SequentialSampler(split, batch_size=4, window=10, seed=0)
    previous = None
    epochs = 0
    for _ in range(30):
        epoch_start = sampler.position == sampler.per_epoch or sampler.position == 0
        sampler.carry = "state"
        x, y = sampler.next()
        assert torch.equal(y, x + 1)
        stripes = (x - 0) // sampler.stripe  # each row stays in its own stripe of the text
        assert torch.equal(stripes.min(1).values, torch.arange(4)) and torch.equal(
            stripes.max(1).values, torch.arange(4)
        )
        if epoch_start:
            epochs += 1
            assert sampler.carry is None  # fresh streams get a fresh state
        else:
            assert torch.equal(x[:, 0], previous[:, -1])  # row b continues exactly where it stopped
        previous = y
    assert epochs >= 2


def test_state_flattening_round_trips():
    h, c = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for state in (h, (h, c), [h, (c, h)], {"h": h, "c": (c,)}):
        back = unflatten_state(flatten_state(state, "carry"), "carry")
        assert type(back) is type(state)
        flat_a, flat_b = flatten_state(state, "x"), flatten_state(back, "x")
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)
    assert unflatten_state({}, "carry") is None


# ---------------------------------------------------------------------------------------------- carried state


class TinyGRU(LanguageModel):
    """A minimal recurrent model for the carried-state tests, independent of models/rnn.py."""

    def __init__(self, vocab_size: int = 12):
        super().__init__(None, vocab_size)
        self.wte = nn.Embedding(vocab_size, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.lm_head = nn.Linear(16, vocab_size)

    def forward(self, idx, targets=None):
        logits, loss, _ = self.forward_with_state(idx, targets)
        return logits, loss

    def forward_with_state(self, idx, targets=None, state=None):
        out, state = self.gru(self.wte(idx), state)  # (B, T, 16)
        logits = self.lm_head(out)
        return logits, sequence_nll(logits, targets) if targets is not None else None, state


def recurrent_models() -> list[LanguageModel]:
    models = [TinyGRU()]
    for name, spec in MODELS.items():
        if spec.model_class.forward_with_state is not LanguageModel.forward_with_state:  # carries state
            models.append(build_model(name, spec.config_class(), 12))
    return models


@pytest.mark.parametrize("model", recurrent_models(), ids=lambda m: type(m).__name__)
def test_two_windows_with_carried_state_equal_one_double_window(model: LanguageModel):
    model.eval()
    idx = torch.randint(1, 12, (3, 20))
    with torch.no_grad():
        whole, _ = model(idx)
        first, _, state = model.forward_with_state(idx[:, :9])
        second, _, _ = model.forward_with_state(idx[:, 9:], None, state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-5)


def test_models_without_state_ignore_it():
    model = build_model("mlp", MODELS["mlp"].config_class(), 12).eval()
    assert not model.carries_state
    idx = torch.randint(1, 12, (2, 7))
    logits, _, state = model.forward_with_state(idx, None, "anything")
    assert state is None and torch.equal(logits, model(idx)[0])


# ------------------------------------------------------------------------------------------------- evaluation


def scored_positions(split: StreamSplit, batch_size: int) -> tuple[Counter, list[tuple[int, int]]]:
    """Over ids = positions: how often each target is scored, and (position, context length) of each."""
    seen, contexts = Counter(), []
    for x, y in split.eval_batches(batch_size):
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            for j, target in enumerate(row_y):
                if target != IGNORE:
                    seen[target] += 1
                    contexts.append((target, j + 1 if row_x[0] > 0 else target))  # from position 0: all of it
    return seen, contexts


@pytest.mark.parametrize("stride", [1, 5, 13, 16])
def test_sliding_windows_score_every_char_once_with_at_least_window_minus_stride_context(stride: int):
    plan = EvalPlan(window=16, stride=stride, carry_state=False, context=16)
    split = positions_split(300, begin=201, end=290, window=16, plan=plan)
    seen, contexts = scored_positions(split, batch_size=7)
    assert seen == Counter(range(201, 290))
    assert min(c for _, c in contexts) >= 16 - stride + 1
    # at the start of the text there is no more context to give: the first window starts at position 0
    early = positions_split(300, begin=1, end=40, window=16, plan=plan)
    seen, contexts = scored_positions(early, batch_size=3)
    assert seen == Counter(range(1, 40)) and all(c >= min(p, 16 - stride + 1) for p, c in contexts)


def test_carried_state_evaluation_scores_every_char_once_in_order():
    plan = EvalPlan(window=8, stride=8, carry_state=True, context=None)
    split = positions_split(2000, begin=1001, end=1900, window=8, plan=plan)
    batches = split.eval_batches(batch_size=64)
    assert batches.carry_state
    rows = list(batches)
    seen = Counter(t for _, y in rows for t in y.flatten().tolist() if t != IGNORE)
    assert seen == Counter(range(1001, 1900))
    for (x0, _), (x1, _) in zip(rows, rows[1:]):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # each row continues its stream


def test_default_plan_gives_count_models_their_full_context():
    ngram = build_model("ngram", MODELS["ngram"].config_class(order=4, smoothing="add-k"), 10)
    plan = plan_eval(ngram, window=64)
    assert plan.stride == 64 - 3 + 1 and "full context of 3" in plan.describe()
    lstm = [m for m in recurrent_models() if isinstance(m, TinyGRU)][0]
    assert plan_eval(lstm, window=64).carry_state


def test_stateful_evaluation_equals_reading_the_text_in_one_go():
    """The evaluator carries state across batches: with one stream, the NLL is that of one long forward pass
    over the warm-up and the split, counted on the split only."""
    torch.manual_seed(0)
    model = TinyGRU().eval()
    ids = np.concatenate([[BOUNDARY], np.random.default_rng(0).integers(1, 12, 400)]).astype(np.uint8)
    split = StreamSplit(ids, 301, 401, window=8, plan=EvalPlan(8, 8, True, None))
    result = evaluate(model, split.eval_batches(batch_size=1))
    start = 301 - 1 - 8  # one stream (100 chars < 16 windows): warmed up on the 8 chars before the split
    x = torch.from_numpy(ids[start:400].astype(np.int64))[None]
    y = torch.from_numpy(ids[start + 1 :].astype(np.int64))[None].clone()
    y[:, :8] = IGNORE
    with torch.no_grad():
        logits, _ = model(x)
    assert result["tokens"] == 100
    assert result["nll"] == pytest.approx(sequence_nll(logits, y).item(), rel=1e-5)


def test_stateful_training_resumes_exactly(tmp_path: Path):
    """Training with carried state, stopped and resumed from its checkpoint, ends with the same weights."""
    ids = np.concatenate([[BOUNDARY], np.random.default_rng(1).integers(1, 12, 3000)]).astype(np.uint8)
    splits = {
        "train": StreamSplit(ids, 1, 2501, window=8, stateful=True),
        "val": StreamSplit(ids, 2501, 3001, window=8, stateful=True, plan=EvalPlan(8, 8, True, None)),
    }

    def run(directory: Path, max_steps: int, resume: bool) -> Trainer:
        torch.manual_seed(0)
        config = TrainConfig(max_steps=max_steps, batch_size=4, eval_every=3, log_every=3, schedule="constant")
        trainer = Trainer(TinyGRU(), splits, config, directory)
        if resume:
            trainer.restore()
        trainer.train()
        return trainer

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = run(tmp_path / "a", 6, False)
    assert straight.carry_state and straight.sampler.carry is not None
    run(tmp_path / "b", 3, False)
    resumed = run(tmp_path / "b", 6, True)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------- mode detection


def test_mode_detector_names_file_is_line_mode(names_file: Path):
    mode, why = detect_mode(names_file)
    assert mode == "line" and "list of items" in why


def test_mode_detector_prose_is_stream_mode(prose_file: Path, tmp_path: Path):
    assert detect_mode(prose_file)[0] == "stream"
    one_line = tmp_path / "one-line.txt"
    one_line.write_text("word " * 200, encoding="utf-8")  # no line breaks at all (like text8)
    mode, why = detect_mode(one_line)
    assert mode == "stream" and "longer than any item" in why


# ------------------------------------------------------------------------------------------------------------ CLI


def hand_bigram_nll(text: str, n_train: int, k: float) -> float:
    """Add-k bigram NLL of text[n_train:], counted on text[:n_train] with the start-of-text symbol before it."""
    symbols = ["<s>"] + sorted(set(text))
    V = len(symbols)
    pairs = Counter(zip(["<s>"] + list(text[: n_train - 1]), text[:n_train]))
    contexts = Counter(prev for prev, _ in pairs.elements())
    nll = [
        -math.log((pairs[(prev, char)] + k) / (contexts[prev] + k * V))
        for prev, char in zip(text[n_train - 1 :], text[n_train:])
    ]
    return sum(nll) / len(nll)


def test_cli_stream_run_eval_matches_a_hand_computed_bigram(tmp_path: Path, capsys):
    text = "the cat sat on the mat.\nthe dog sat on the log.\n"
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    run_dir = tmp_path / "run"
    args = ["train", "-i", str(path), "--mode", "stream", "--split", "0.8,0.2", "--seq-len", "4", "--model", "ngram"]
    assert (
        cli.run(args + ["--order", "2", "--smoothing", "add-k", "--k", "0.5", "-o", str(run_dir), "--samples", "0"])
        == 0
    )
    assert not (run_dir / "train.txt").exists()  # the run records the file, it does not copy it
    data = json.loads((run_dir / "run.json").read_text())["data"]
    assert data["mode"] == "stream" and data["offsets"]["val"] == [1 + int(len(text) * 0.8), len(text) + 1]
    capsys.readouterr()
    assert cli.run(["eval", str(run_dir), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)["val"]
    n_train = int(len(text) * 0.8)
    assert result["tokens"] == len(text) - n_train
    assert result["nll"] == pytest.approx(hand_bigram_nll(text, n_train, 0.5), abs=1e-5)
    assert "full context" in result["context"]

    # sampling streams the prompt and exactly --length characters
    assert cli.run(["sample", str(run_dir), "--prompt", "the ", "--length", "30", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the ") and len(out) == len("the ") + 30 + 1
    with pytest.raises(MakemoreError, match="--prompt .* not in the model's vocabulary: 'Z'"):
        cli.run(["sample", str(run_dir), "--prompt", "the Zebra"])

    # a changed corpus is refused, not silently evaluated
    path.write_text(text.replace("dog", "cat"), encoding="utf-8")
    with pytest.raises(MakemoreError, match="changed since the run was made"):
        cli.run(["eval", str(run_dir)])


def test_cli_stream_flags_are_checked(prose_file: Path, names_file: Path, tmp_path: Path):
    with pytest.raises(MakemoreError, match="for stream mode"):
        cli.run(["train", "-i", str(names_file), "--model", "gru", "--stateful", "-o", str(tmp_path / "a")])
    with pytest.raises(MakemoreError, match="does not carry state"):
        cli.run(["train", "-i", str(prose_file), "--model", "ngram", "--stateful", "-o", str(tmp_path / "b")])
    with pytest.raises(MakemoreError, match="built-in list of names"):
        cli.run(["train", "--mode", "stream", "-o", str(tmp_path / "c")])


def test_auto_order_ngram_is_evaluated_with_the_context_it_was_fitted_with(prose_file: Path, tmp_path: Path, capsys):
    # --order auto fixes the n-gram's context only when fitted: the val NLL the run reports must use that context
    run_dir = tmp_path / "kn"
    args = ["train", "-i", str(prose_file), "--mode", "stream", "--model", "ngram", "--dev-fraction", "0.1"]
    assert cli.run(args + ["--seq-len", "32", "-o", str(run_dir), "--samples", "0"]) == 0
    reported = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reported = [m["val_loss"] for m in reported if m.get("event") == "eval"][-1]
    capsys.readouterr()
    assert cli.run(["eval", str(run_dir), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)["val"]
    assert "full context" in result["context"] and " 0 chars" not in result["context"]
    assert reported == pytest.approx(result["nll"], abs=1e-6)
