"""Plots, the LR finder, training diagnostics and TensorBoard: every command writes an image of the expected pixel
size from a tiny run, with no display (figures render through the Agg canvas)."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from makemore.cli.lr_find import take_lr_auto
from makemore.data.lines import LineSplit, Vocab
from makemore.insight import plots
from makemore.jobs.lr_find import find_lr, suggest_lr
from makemore.models import MODELS, build_model
from makemore.models.transformer import visible_keys
from makemore.training import diagnostics
from makemore.training.config import TrainConfig

DPI = 40  # small images: fast tests
TINY_MLP = ["--model", "mlp", "--block-size", "3", "--n-embd", "5", "--n-hidden", "16", "--batch-size", "8"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def train(capsys, tmp_path: Path, names_file: Path, name: str, *extra) -> Path:
    run = tmp_path / name
    common = ["--max-steps", 12, "--log-every", 4, "--eval-every", 6, "--samples", 0, "--device", "cpu"]
    code, out, err = run_cli(capsys, "train", "-i", names_file, "--out", run, *common, *extra)
    assert code == 0, err
    return run


@pytest.fixture
def mlp_run(capsys, tmp_path, names_file) -> Path:
    return train(capsys, tmp_path, names_file, "mlp", *TINY_MLP, "--diagnostics")


def test_every_plot_command_writes_an_image_of_the_expected_size(capsys, tmp_path, names_file, mlp_run):
    vocab_size = Vocab.from_texts(names_file.read_text().split()).size
    bigram_w, bigram_h = plots.bigram_figure_size(vocab_size)
    cases = {
        "loss.png": (["plot", "loss", mlp_run, mlp_run, "--label", "a", "--label", "b", "--smooth", 2], (11, 6.5)),
        "loss-time.png": (["plot", "loss", mlp_run, "--x", "time"], (11, 6.5)),
        "counts.png": (["plot", "bigram", names_file], (bigram_w, bigram_h)),
        "learned.png": (["plot", "bigram", mlp_run], (bigram_w, bigram_h)),
        "embeddings.png": (["plot", "embeddings", mlp_run], (9.5, 8.5)),
        "activations.png": (["plot", "activations", mlp_run], (18, 11.5)),
    }
    for name, (argv, (width, height)) in cases.items():
        out = tmp_path / "images" / name
        code, stdout, err = run_cli(capsys, *argv, "--out", out, "--dpi", DPI)
        assert code == 0, f"{name}: {err}"
        assert f"wrote {out}" in stdout
        assert png_size(out) == (round(width * DPI), round(height * DPI)), name
        assert out.stat().st_size > 2000, f"{name} looks empty"


def test_default_output_goes_to_the_run_and_svg_works(capsys, mlp_run):
    code, out, err = run_cli(capsys, "plot", "embeddings", mlp_run, "--format", "svg", "--dpi", DPI)
    assert code == 0, err
    svg = mlp_run / "plots" / "embeddings.svg"
    assert svg.exists() and "<svg" in svg.read_text()[:2000]


def test_lr_find_command_and_train_lr_auto(capsys, tmp_path, names_file):
    out = tmp_path / "lr.png"
    code, stdout, err = run_cli(
        capsys, "lr-find", "-i", names_file, *TINY_MLP, "--steps", 40, "--out", out, "--dpi", DPI, "--device", "cpu"
    )
    assert code == 0, err
    assert "suggested lr" in stdout and png_size(out) == (10 * DPI, 6 * DPI)

    run = train(capsys, tmp_path, names_file, "auto", *TINY_MLP, "--lr", "auto")
    lr = json.loads((run / "run.json").read_text())["train_config"]["lr"]
    assert 1e-5 <= lr <= 10.0  # inside the default sweep
    code, stdout, err = run_cli(capsys, "train", "--resume", run, "--lr", "auto")
    assert code == 2 and "--lr auto is for a fresh run" in err


def test_take_lr_auto():
    assert take_lr_auto(["--lr", "auto", "--max-steps", "5"]) == (["--max-steps", "5"], True)
    assert take_lr_auto(["--lr=auto"]) == ([], True)
    assert take_lr_auto(["--lr", "0.1"]) == (["--lr", "0.1"], False)


def tiny_problem() -> tuple[torch.nn.Module, LineSplit, TrainConfig]:
    names = "emma olivia ava isabella sophia mia amelia harper evelyn abigail emily ella luna nora".split()
    vocab = Vocab.from_texts(names)
    torch.manual_seed(0)
    model = build_model("mlp", MODELS["mlp"].config_class(block_size=3, n_embd=4, n_hidden=16, dropout=0.0), vocab.size)
    return model, LineSplit(names, vocab), TrainConfig(batch_size=8, device="cpu")


def test_lr_finder_suggests_an_lr_inside_the_sweep_with_the_expected_curve_length():
    model, split, config = tiny_problem()
    result = find_lr(model, split, config, min_lr=1e-4, max_lr=1e-1, steps=50)
    assert result.stopped == "completed"  # lr <= 0.1 with clipping: no divergence on this problem
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 50
    assert result.lrs[0] == pytest.approx(1e-4) and result.lrs[-1] == pytest.approx(1e-1)
    assert np.allclose(np.diff(np.log(result.lrs)), np.log(1e3) / 49)  # exponential sweep
    assert result.min_lr <= result.suggestion <= result.lrs[-1]
    assert result.suggestion == result.lrs[result.suggestion_index]

    model, split, config = tiny_problem()
    result = find_lr(model, split, config, min_lr=1e-3, max_lr=1e6, steps=60)
    assert result.stopped == "diverged" and 10 < len(result.lrs) < 60 and len(result.losses) == len(result.lrs)
    assert result.min_lr <= result.suggestion <= result.lrs[-1]


def test_suggest_lr_is_half_the_lr_of_the_smoothed_minimum():
    lrs = np.geomspace(1e-4, 1.0, 121)
    x = np.log10(lrs)
    # falls, then a gently sloping floor, then a cliff: the minimum is at 10^-1
    losses = 3.0 - np.tanh(3 * (x + 2.5)) - 0.2 * x + 50 * np.maximum(x + 1.0, 0) ** 2
    losses += np.random.default_rng(0).normal(scale=0.005, size=len(lrs))  # batch noise: the smoothing copes
    index, smoothed = suggest_lr(lrs, losses)
    lowest = lrs[np.argmin(smoothed)]
    assert 10**-1.15 <= lowest <= 10**-0.85
    assert lrs[index] == pytest.approx(lowest / 2, rel=0.05) and len(smoothed) == len(lrs)


def test_symbol_labels_are_printable():
    assert plots.symbol_labels(Vocab(list("ab"))) == [".", "a", "b"]
    assert plots.symbol_labels(Vocab(list(" .\n"))) == ["·", "␣", ".", "↵"]  # '.' taken: the boundary is '·'


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)) * np.array([5.0, 2.0, 0.5]) @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    coords, explained = plots.pca_2d(points)
    centred = points - points.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    for k in range(2):  # equal up to the sign of each component
        sign = np.sign(coords[:, k] @ (u[:, k] * s[k]))
        np.testing.assert_allclose(coords[:, k], sign * u[:, k] * s[k], atol=1e-10)
        np.testing.assert_allclose(coords[:, k], sign * centred @ vt[k], atol=1e-10)
    np.testing.assert_allclose(explained, s[:2] ** 2 / (s**2).sum())
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1]  # the same shares from the covariance
    np.testing.assert_allclose(explained, eigenvalues[:2] / eigenvalues.sum())
    flat = np.c_[points[:, :2], np.zeros(50)]  # points on a plane: two components explain everything
    assert plots.pca_2d(flat)[1].sum() == pytest.approx(1.0)


def test_clear_errors_for_models_without_embeddings_or_attention(capsys, tmp_path, names_file, mlp_run):
    bigram = train(capsys, tmp_path, names_file, "bigram", "--model", "bigram", "--batch-size", 8)
    code, _, err = run_cli(capsys, "plot", "embeddings", bigram)
    assert code == 2 and "no character embedding table" in err
    code, _, err = run_cli(capsys, "plot", "attention", mlp_run, "--text", "emma")
    assert code == 2 and "no attention maps" in err
    code, _, err = run_cli(capsys, "plot", "activations", bigram)
    assert code == 2 and "train with --diagnostics" in err


def test_attention_plot_and_maps_match_the_fused_attention(capsys, tmp_path, names_file):
    tiny = ["--model", "transformer", "--block-size", "8", "--n-layer", "2", "--n-head", "2", "--n-embd", "8"]
    run = train(capsys, tmp_path, names_file, "tf", *tiny, "--batch-size", 8)
    out = tmp_path / "attention.png"
    code, stdout, err = run_cli(capsys, "plot", "attention", run, "--text", "emma", "--out", out, "--dpi", DPI)
    assert code == 0, err
    assert png_size(out)[0] > 100 and out.stat().st_size > 2000
    code, _, err = run_cli(capsys, "plot", "attention", run, "--text", "emmaemmaem")
    assert code == 2 and "at most 7" in err

    model = build_model("transformer", MODELS["transformer"].config_class(block_size=8, n_head=2, n_embd=8), 10).eval()
    idx = torch.randint(1, 10, (3, 6))  # no boundary inside: one item per row, plain causal attention
    maps = model.attention_maps(idx)
    assert len(maps) == model.config.n_layer and maps[0].shape == (3, 2, 6, 6)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 6))
    assert torch.all(maps[0].triu(diagonal=1) == 0)  # causal
    block = model.blocks[0]  # weights x values through c_proj == the block's fused attention output
    x = model.wte(idx) + model.wpe(torch.arange(6))
    v = block.attn.c_attn(block.ln_1(x)).view(3, 6, 3, 2, 4)[:, :, 2].transpose(1, 2)  # (B, nh, T, hs)
    mixed = block.attn.c_proj((maps[0] @ v).transpose(1, 2).reshape(3, 6, 8))
    causal = visible_keys(torch.zeros(3, 6, dtype=torch.long))  # every query's item starts at 0
    with torch.no_grad():
        torch.testing.assert_close(mixed, block.attn(block.ln_1(x), causal), atol=1e-5, rtol=1e-4)


def test_learned_bigram_direct_and_averaged(names_file):
    names = names_file.read_text().split()
    vocab = Vocab.from_texts(names)
    bigram = build_model("bigram", MODELS["bigram"].config_class(), vocab.size)
    with torch.no_grad():
        bigram.logits.normal_()
    probs, how = plots.learned_bigram(bigram, None)
    assert how == "direct"
    np.testing.assert_allclose(probs, torch.softmax(bigram.logits.detach(), -1).numpy(), atol=1e-6)

    mlp = build_model("mlp", MODELS["mlp"].config_class(block_size=3, n_embd=4, n_hidden=8), vocab.size)
    probs, how = plots.learned_bigram(mlp, LineSplit(names[:20], vocab))
    assert how == "averaged over val"
    seen = ~np.isnan(probs).any(axis=1)
    np.testing.assert_allclose(probs[seen].sum(axis=1), 1.0, atol=1e-6)

    counts = plots.bigram_counts(names, vocab)
    assert counts.sum() == sum(len(n) + 1 for n in names)  # every character and the closing boundary


def test_diagnostics_records_and_export_embeddings(capsys, tmp_path, mlp_run):
    records = diagnostics.read_diagnostics(mlp_run)
    assert [r["step"] for r in records] == [4, 8, 12]  # one per logged step
    names = {e["name"]: e for e in records[-1]["activations"]}
    tanh = names["drop"]  # a Dropout's input: the MLP's functional tanh
    assert tanh["min"] >= -1 and tanh["max"] <= 1 and 0 <= tanh["saturated"] <= 1 and tanh["grad"]["n"] > 0
    assert sum(tanh["counts"]) == tanh["n"]
    params = {p["name"]: p for p in records[-1]["params"]}
    assert set(params) == {"wte.weight", "hidden.0.weight", "lm_head.weight"}
    assert all(p["update_ratio"] > 0 for p in params.values())
    metrics = [json.loads(line) for line in (mlp_run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["grad_norm"] > 0 for m in metrics if m["event"] == "train")

    code, out, err = run_cli(capsys, "export-embeddings", mlp_run, "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader((mlp_run / "embeddings.csv").open(encoding="utf-8")))
    vocab = json.loads((mlp_run / "run.json").read_text())["vocab"]
    assert rows[0][:3] == ["id", "symbol", "dim_0"] and len(rows) == len(vocab) + 2 and len(rows[1]) == 2 + 5
    assert rows[2][1] == vocab[0]
    code, out, err = run_cli(capsys, "export-embeddings", mlp_run, "--format", "npy", "--out", tmp_path / "e.npy")
    assert code == 0, err
    table = np.load(tmp_path / "e.npy")
    assert table.shape == (len(vocab) + 1, 5)
    np.testing.assert_allclose(table[1:, 0], [float(r[2]) for r in rows[2:]], rtol=1e-6)


def test_a_module_called_twice_gets_one_entry_per_call(tmp_path):
    class Shared(torch.nn.Module):  # one Dropout for every layer, as WaveNet-style models do
        def __init__(self):
            super().__init__()
            self.a, self.b, self.drop = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Dropout(0.0)

        def forward(self, x):
            return self.b(self.drop(torch.tanh(self.a(self.drop(x)))))

    model = Shared()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    observer = diagnostics.Observer(model, optimizer, tmp_path, diagnostics=True)
    observer.arm(True)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    observer.on_log({"event": "train", "step": 1})
    (record,) = diagnostics.read_diagnostics(tmp_path)
    assert [e["name"] for e in record["activations"]] == ["drop[1]", "a", "drop[2]", "b"]
    assert record["activations"][2]["saturated"] is not None  # the tanh output, seen at the second call
    assert record["activations"][0]["saturated"] is None  # unbounded input
    assert [p["name"] for p in record["params"]] == ["a.weight", "b.weight"]


def test_tensorboard_absent_is_a_one_line_hint(capsys, tmp_path, names_file, monkeypatch):
    monkeypatch.setattr(diagnostics, "tensorboard_available", lambda: False)
    run = tmp_path / "tb"
    code, out, err = run_cli(
        capsys, "train", "-i", names_file, "--out", run, *TINY_MLP, "--max-steps", 4, "--samples", 0, "--tensorboard"
    )
    assert code == 0, err
    assert "pip install 'makemore[tensorboard]'" in err and not (run / "tensorboard").exists()


def test_tensorboard_writes_events(capsys, tmp_path, names_file):
    pytest.importorskip("tensorboard")
    run = train(capsys, tmp_path, names_file, "tb", *TINY_MLP, "--tensorboard", "--diagnostics")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    assert {"loss/train", "loss/val", "train/lr", "train/grad_norm"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("activations/") for tag in events.Tags()["histograms"])
    assert not math.isnan(events.Scalars("loss/train")[-1].value)


def test_plot_loss_of_a_fitted_run_says_there_is_no_curve(capsys, tmp_path, names_file, mlp_run):
    ngram = train(capsys, tmp_path, names_file, "ngram", "--model", "ngram", "--order", 2)
    code, out, err = run_cli(capsys, "plot", "loss", ngram, "--dpi", DPI)
    assert code == 2 and err.count("\n") == 1 and "no loss curve" in err and "closed form" in err
    assert not (ngram / "plots").exists()
    out_file = tmp_path / "both.png"  # beside a trained run, the fitted one is a reference line
    code, _, err = run_cli(capsys, "plot", "loss", ngram, mlp_run, "--out", out_file, "--dpi", DPI)
    assert code == 0 and out_file.exists(), err


def test_embeddings_of_a_mix_are_refused_with_its_member_runs_named(capsys, tmp_path, names_file, mlp_run):
    ngram = train(capsys, tmp_path, names_file, "ngram", "--model", "ngram", "--order", 2)
    mix = tmp_path / "mix"
    assert run_cli(capsys, "mix", mlp_run, ngram, "--out", mix)[0] == 0
    for argv in (["plot", "embeddings", mix], ["export-embeddings", mix]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "mix run has no character embeddings of its own" in err and str(mlp_run.resolve()) in err
    assert not (mix / "plots").exists() and not (mix / "embeddings.csv").exists()


def test_bigram_of_running_text_counts_pairs_across_lines(capsys, tmp_path):
    from test_stream import PROSE

    text = PROSE * 3
    path = tmp_path / "prose.txt"
    path.write_text(text, encoding="utf-8")
    picture = plots.data_bigram(str(path))
    assert picture.mode == "stream"
    chars = sorted(set(text))
    assert picture.labels[chars.index("\n")] == "↵"  # a line break is a character, and no boundary symbol
    assert len(picture.labels) == len(chars) and picture.matrix.shape == (len(chars), len(chars))
    expected = np.zeros_like(picture.matrix)
    for a, b in zip(text, text[1:]):
        expected[chars.index(a), chars.index(b)] += 1
    np.testing.assert_array_equal(picture.matrix, expected)
    assert plots.data_bigram(str(path), mode="line").mode == "line"  # asked for: items, one per line

    out = tmp_path / "prose-bigram.png"
    code, stdout, err = run_cli(capsys, "plot", "bigram", path, "--out", out, "--dpi", DPI)
    assert code == 0, err
    assert png_size(out) == tuple(round(side * DPI) for side in plots.bigram_figure_size(len(chars)))


def test_stream_run_bigram_is_averaged_over_its_val_stretch(capsys, tmp_path):
    from test_stream import PROSE

    path = tmp_path / "prose.txt"
    path.write_text(PROSE * 6, encoding="utf-8")
    run = tmp_path / "kn"
    flags = ["--mode", "stream", "--model", "ngram", "--order", 3, "--samples", 0]
    assert run_cli(capsys, "train", "-i", path, "--out", run, *flags)[0] == 0
    spec, model = ckpt_load(run)
    picture = plots.run_bigram(run, model, spec.vocab, spec.data)
    assert picture.mode == "stream" and picture.detail.endswith("val characters")
    assert picture.matrix.shape == (spec.vocab.size - 1, spec.vocab.size - 1)  # no boundary row and column
    seen = ~np.isnan(picture.matrix).any(axis=1)
    assert seen.sum() > 5 and np.all(picture.matrix[seen].sum(axis=1) <= 1.0 + 1e-6)


def ckpt_load(run: Path):
    from makemore.runs import checkpoint as ckpt

    return ckpt.load_model(run)


def test_every_insight_module_is_short():
    import makemore.insight as insight

    folder = Path(insight.__file__).parent
    lengths = {path.name: len(path.read_text().splitlines()) for path in folder.glob("*.py")}
    assert len(lengths) >= 5 and max(lengths.values()) < 500, lengths
